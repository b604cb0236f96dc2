from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.splitlearn.latency import (
    Plan,
    Scenario,
    UEConfig,
    bound_terms,
    micro_batch_sizes,
    round_time_bound,
    simulate,
    sync_per_round,
)
from edgecloud.splitlearn.profiling import ModelProfile

UES = (UEConfig(20, 5), UEConfig(10, 15), UEConfig(40, 20))


@settings(deadline=None)
@given(st.integers(1, 200).flatmap(lambda batch: st.tuples(st.just(batch), st.integers(1, batch))))
def test_micro_batches_partition_the_batch(batch_and_count: tuple[int, int]) -> None:
    batch, count = batch_and_count
    sizes = micro_batch_sizes(batch, count)
    assert sum(sizes) == batch and len(sizes) == count and max(sizes) - min(sizes) <= 1


def test_plan_validation_names_the_field(
    cnn_profile: ModelProfile, scenario: Callable[..., Scenario]
) -> None:
    sc = scenario(cnn_profile, UES, 2.0)
    with pytest.raises(ValueError, match=r"cut must be in 1\.\.4, got 0"):
        Plan("c2p2sl", 0, (1, 1, 1), (0.3, 0.3, 0.3)).validate(sc)
    with pytest.raises(ValueError, match=r"micro_batches must be in 1\.\.16"):
        Plan("c2p2sl", 2, (1, 17, 1), (0.3, 0.3, 0.3)).validate(sc)
    with pytest.raises(ValueError, match="uplink_shares"):
        Plan("c2p2sl", 2, (1, 1, 1), (0.5, 0.5, 0.5)).validate(sc)
    with pytest.raises(ValueError, match="slowdown must be >= 1"):
        UEConfig(0.5, 10.0)


def test_one_ue_without_micro_batches_is_the_sequential_chain(
    cnn_profile: ModelProfile, scenario: Callable[..., Scenario]
) -> None:
    """With one UE, one micro-batch and the whole band, C2P2SL has nothing to overlap: it is
    sequential SL minus the two control messages that gate a sequential turn."""
    sc = scenario(cnn_profile, (UEConfig(10, 10),), 2.0)
    pipelined = simulate(sc, Plan("c2p2sl", 2, (1,), (1.0,)), rounds=5, rounds_per_sync=5)
    sequential = simulate(sc, Plan("sequential", 2, (1,), (1.0,)), rounds=5, rounds_per_sync=5)
    assert pipelined.total_s < sequential.total_s
    assert sequential.total_s - pipelined.total_s < 1e-3


def test_micro_batches_overlap_communication_with_compute(
    cnn_profile: ModelProfile, scenario: Callable[..., Scenario]
) -> None:
    sc = scenario(cnn_profile, (UEConfig(20, 10),), 1.0)
    times = [simulate(sc, Plan("c2p2sl", 2, (m,), (1.0,)), 10, 10).total_s for m in (1, 2, 4)]
    assert times[0] > times[1] > times[2]


@settings(max_examples=25, deadline=None)
@given(st.floats(0.2, 20), st.integers(1, 3), st.integers(1, 4))
def test_more_bandwidth_is_never_slower(
    mlp_profile: ModelProfile, scenario: Callable[..., Scenario], bandwidth_mhz: float, cut: int, m: int
) -> None:
    profile = mlp_profile
    plan = Plan("c2p2sl", cut, (m,) * 3, (0.2, 0.3, 0.5))
    slow = simulate(scenario(profile, UES, bandwidth_mhz), plan, 3, 3).total_s
    fast = simulate(scenario(profile, UES, bandwidth_mhz * 2), plan, 3, 3).total_s
    assert fast <= slow + 1e-12


def test_bound_pieces_agree_with_min_share(
    cnn_profile: ModelProfile, scenario: Callable[..., Scenario]
) -> None:
    sc = scenario(cnn_profile, UES, 2.0)
    for m in (1, 3, 8):
        terms = bound_terms(sc, 3, 0, m)
        for share in (0.05, 0.3, 1.0):
            t = terms.round_s(share)
            assert terms.min_share(t) == pytest.approx(share, rel=1e-9) or terms.min_share(t) < share
            assert terms.round_s(terms.min_share(t * 1.01)) <= t * 1.01 + 1e-12


def test_bound_tracks_the_simulation(cnn_profile: ModelProfile, scenario: Callable[..., Scenario]) -> None:
    """The optimiser's closed form and the event replay differ only by fill/drain coupling."""
    sc = scenario(cnn_profile, UES, 2.0)
    plan = Plan("c2p2sl", 4, (4, 2, 2), (0.5, 0.25, 0.25))
    per_round = simulate(sc, plan, 22, 22).total_s / 22
    assert per_round == pytest.approx(round_time_bound(sc, plan), rel=0.35)


def test_client_model_averaging_happens_every_rounds_per_sync(
    cnn_profile: ModelProfile, scenario: Callable[..., Scenario]
) -> None:
    """The replay averages after every ``rounds_per_sync`` rounds and after the last, as the runtime does."""
    sc = scenario(cnn_profile, UES, 2.0)
    plan = Plan("c2p2sl", 3, (2, 2, 2), (0.4, 0.3, 0.3))
    ends = simulate(sc, plan, rounds=7, rounds_per_sync=3).round_end_s
    steps = [b - a for a, b in zip((0.0, *ends), ends, strict=False)]
    synced = {2, 5, 6}  # rounds 3 and 6 end a period; round 7 is the last
    plain = [s for i, s in enumerate(steps) if i not in synced and i > 0]
    # A round that ends with an averaging is longer by the transfers of every client model, both ways.
    assert min(steps[i] for i in synced) > max(plain) + 0.5 * sync_per_round(sc, 3) * sc.rounds_per_sync
    with pytest.raises(ValueError, match="rounds_per_sync must be >= 1"):
        simulate(sc, plan, rounds=3, rounds_per_sync=0)
