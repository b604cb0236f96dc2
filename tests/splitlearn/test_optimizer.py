from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from edgecloud.splitlearn.latency import (
    Scenario,
    UEConfig,
    bound_terms,
    bs_bound,
    round_time_bound,
    simulate,
)
from edgecloud.splitlearn.optimizer import _convex_step, exhaustive, optimal_shares, optimise, sequential_plan
from edgecloud.splitlearn.profiling import ModelProfile


def _instances(rng: np.random.Generator, count: int) -> list[tuple[tuple[UEConfig, ...], float]]:
    out = []
    for _ in range(count):
        k = int(rng.integers(2, 4))
        ues = tuple(UEConfig(float(rng.uniform(1, 50)), float(rng.uniform(0, 25))) for _ in range(k))
        out.append((ues, float(rng.choice([0.5, 1.0, 2.0, 5.0, 20.0]))))
    return out


@pytest.mark.parametrize("model", ["cnn", "mlp"])
def test_optimiser_within_two_percent_of_exhaustive(
    model: str, cnn_profile: ModelProfile, mlp_profile: ModelProfile, scenario: Callable[..., Scenario]
) -> None:
    profile = cnn_profile if model == "cnn" else mlp_profile
    for ues, bandwidth in _instances(np.random.default_rng(7), 6):
        sc = scenario(profile, ues, bandwidth)
        found = optimise(sc, max_micro_batches=4)
        best = exhaustive(sc, max_micro_batches=4)
        assert found.bound_s <= best.bound_s * 1.02, (ues, bandwidth, found, best)
        assert found.bound_s == pytest.approx(round_time_bound(sc, found.plan))
        assert sum(found.plan.uplink_shares) <= 1 + 1e-9


def test_convex_step_matches_exact_bisection(
    cnn_profile: ModelProfile, scenario: Callable[..., Scenario]
) -> None:
    sc = scenario(cnn_profile, (UEConfig(20, 5), UEConfig(10, 15), UEConfig(40, 20)), 1.0)
    for cut, micro in [(2, (4, 2, 1)), (4, (1, 1, 1)), (3, (8, 8, 2))]:
        terms = [bound_terms(sc, cut, k, m) for k, m in enumerate(micro)]
        bs = bs_bound(sc, cut, micro)
        shares = _convex_step(terms, bs, (1 / 3,) * 3)
        exact, _ = optimal_shares(terms, bs)
        achieved = max(bs, *(t.round_s(b) for t, b in zip(terms, shares, strict=True)))
        assert achieved == pytest.approx(exact, rel=1e-4)


def test_pinned_cut_is_respected_and_optimised_plan_beats_sequential(
    cnn_profile: ModelProfile, scenario: Callable[..., Scenario]
) -> None:
    sc = scenario(cnn_profile, (UEConfig(20, 5), UEConfig(10, 15), UEConfig(40, 20), UEConfig(20, 10)), 2.0)
    pinned = optimise(sc, cut=2)
    assert pinned.plan.cut == 2
    free = optimise(sc)
    assert free.bound_s <= pinned.bound_s + 1e-12
    sequential = sequential_plan(sc)
    assert sequential.schedule == "sequential" and sequential.micro_batches == (1, 1, 1, 1)
    assert simulate(sc, free.plan, 22, 22).total_s < simulate(sc, sequential, 22, 22).total_s


def test_bad_pinned_cut_is_rejected(cnn_profile: ModelProfile, scenario: Callable[..., Scenario]) -> None:
    sc = scenario(cnn_profile, (UEConfig(2, 5),), 2.0)
    with pytest.raises(ValueError, match=r"cut must be in 1\.\.4, got 9"):
        optimise(sc, cut=9)


def test_the_optimiser_uses_fewer_micro_batches_when_gradients_are_taken_late_at_a_cost(
    cnn_profile: ModelProfile, scenario: Callable[..., Scenario]
) -> None:
    """The late-receive hand-off is in the optimiser's objective too: as it grows, pipelining
    finer stops paying and the plan uses fewer micro-batches."""
    sc = scenario(cnn_profile, (UEConfig(20, 5), UEConfig(10, 15), UEConfig(40, 20)), 0.5)
    counts = [
        sum(optimise(replace(sc, late_receive_s=late), max_micro_batches=8).plan.micro_batches)
        for late in (0.0, 3e-3, 1e-2)
    ]
    assert counts[0] > counts[1] > counts[2]
