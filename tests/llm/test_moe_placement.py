"""Expert placement policies against measured imbalance: ``static`` (contiguous), DeepSeek's EPLB and
OmniPlacement (static + redundant + dynamic rebalancing), on skewed and drifting loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.llm.moe import Placement, align, eplb_placement, omni_placement, static_placement
from edgecloud.llm.moe.bench import evaluate, synthetic_traces
from edgecloud.llm.moe.rebalance import OmniRebalancer, RebalanceConfig


def zipf_load(layers: int, experts: int, s: float, seed: int, scale: float = 1000.0) -> np.ndarray:
    """Each layer: Zipf(s) popularity over its experts in a random order (which experts are hot
    differs between layers, as in trained models)."""
    rng = np.random.default_rng(seed)
    w = scale / np.arange(1, experts + 1) ** s
    return np.stack([rng.permutation(w) for _ in range(layers)])


def assert_valid(placement: Placement, slots_per_rank: int, one_per_rank: bool) -> None:
    table = placement.slot_expert.reshape(placement.num_layers, placement.num_ranks, slots_per_rank)
    for layer in table:
        assert set(np.unique(layer[layer >= 0])) == set(range(placement.num_experts))
        if one_per_rank:
            for rank in layer:
                held = rank[rank >= 0]
                assert len(held) == len(set(held.tolist())), "two replicas of one expert on one rank"


def test_skewed_load_static_is_unbalanced_omni_is_not() -> None:
    load = zipf_load(4, 16, 1.2, seed=0)
    static = static_placement(4, 16, 4)
    omni = omni_placement(load, 4, 5)  # one redundant slot per rank
    eplb = eplb_placement(load, 4, 5)
    assert_valid(omni, 5, one_per_rank=False)
    assert_valid(eplb, 5, one_per_rank=False)
    assert static.imbalance(load).max() >= 1.9
    assert omni.imbalance(load).max() <= 1.10
    assert (omni.imbalance(load) <= eplb.imbalance(load) + 1e-9).all()
    # Without a redundant slot the floor is the hottest expert's rank holding the 3 lightest others.
    ordered = np.sort(load, axis=1)
    floor = (ordered[:, -1] + ordered[:, :3].sum(axis=1)) / (load.sum(axis=1) / 4)
    assert np.allclose(omni_placement(load, 4, 4).imbalance(load), floor)
    assert (omni.replica_counts().sum(axis=1) == 20).all()


@settings(max_examples=30, deadline=None)
@given(
    experts=st.sampled_from([8, 16, 32]),
    ranks=st.sampled_from([2, 4, 8]),
    seed=st.integers(0, 2**31 - 1),
)
def test_omni_is_at_least_as_balanced_as_eplb_on_the_load_it_places(experts: int, ranks: int, seed: int) -> None:
    """Heavy-tailed loads (Pareto, one spare slot per rank): OmniPlacement's local search starts from
    an even and an uneven split of each hot expert and never ends above EPLB's packing."""
    rng = np.random.default_rng(seed)
    load = rng.pareto(1.0, size=(1, experts)) * 100 + 1e-3
    slots = -(-experts // ranks) + 1
    omni, eplb = omni_placement(load, ranks, slots), eplb_placement(load, ranks, slots)
    assert_valid(omni, slots, one_per_rank=False)
    assert omni.imbalance(load)[0] <= eplb.imbalance(load)[0] + 1e-9
    # Nothing is lost or made up: every expert's load is dealt over its replicas.
    assert np.isclose(omni.rank_loads(load).sum(), load.sum())


def test_rank_loads_split_a_replicated_expert_evenly() -> None:
    table = np.array([[0, 1, 0, 2]])  # expert 0 on both ranks
    placement = Placement(table, 2, 3)
    assert placement.rank_loads(np.array([[10.0, 3.0, 5.0]])).tolist() == [[8.0, 10.0]]
    assert placement.imbalance(np.array([[10.0, 3.0, 5.0]])).tolist() == [10.0 / 9.0]
    assert placement.imbalance(np.zeros((1, 3))).tolist() == [1.0]


@settings(max_examples=40, deadline=None)
@given(
    experts=st.sampled_from([4, 8, 16]),
    ranks=st.sampled_from([1, 2, 4]),
    spare=st.integers(0, 2),
    seed=st.integers(0, 2**31 - 1),
)
def test_policies_place_every_expert_within_the_slot_budget(experts: int, ranks: int, spare: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    load = rng.pareto(1.0, size=(2, experts)) * 100 * rng.integers(0, 2, size=(2, experts))
    slots = experts // ranks + spare
    for placement, one_per_rank in ((omni_placement(load, ranks, slots), False),
                                    (eplb_placement(load, ranks, slots), False),
                                    (static_placement(2, experts, ranks, slots), True)):
        assert placement.slot_expert.shape == (2, ranks * slots)
        assert_valid(placement, slots, one_per_rank)
        assert np.allclose(placement.rank_loads(load).sum(axis=1), load.sum(axis=1))  # nothing lost
        assert (placement.imbalance(load) >= 1.0 - 1e-12).all()
        assert (placement.imbalance(load) <= ranks + 1e-9).all()


def test_align_keeps_experts_where_they_are() -> None:
    load = zipf_load(3, 16, 1.0, seed=1)
    old = omni_placement(load, 4, 5)
    # The same placement with its ranks and slots shuffled: aligning it moves nothing.
    rng = np.random.default_rng(2)
    shuffled = old.slot_expert.reshape(3, 4, 5)[:, rng.permutation(4)][:, :, rng.permutation(5)].reshape(3, 20)
    assert align(Placement(shuffled, 4, 16), old) == old
    new = omni_placement(zipf_load(3, 16, 1.0, seed=3), 4, 5)
    aligned = align(new, old)
    assert np.allclose(aligned.rank_loads(load).sum(axis=1), new.rank_loads(load).sum(axis=1))
    assert np.allclose(np.sort(aligned.imbalance(load)), np.sort(new.imbalance(load)))
    assert (old.moved_slots(aligned) <= old.moved_slots(new)).all()


def test_placement_rejects_bad_tables() -> None:
    with pytest.raises(ValueError, match=r"experts \[3\] have no slot"):
        Placement(np.array([[0, 1, 2, 2]]), 2, 4)
    with pytest.raises(ValueError, match="not a multiple of num_ranks=3"):
        Placement(np.array([[0, 1, 2, 3]]), 3, 4)
    with pytest.raises(ValueError, match=r"expert ids in \[0, 4\)"):
        Placement(np.array([[0, 1, 2, 4]]), 2, 4)
    with pytest.raises(ValueError, match="cannot hold 16 experts"):
        omni_placement(np.ones((1, 16)), 4, 3)
    with pytest.raises(ValueError, match=r"load must be \[layers=1, experts=16\]"):
        static_placement(1, 16, 4).imbalance(np.ones((2, 16)))
    with pytest.raises(ValueError, match=r"trigger must be >= 1\.0"):
        RebalanceConfig(trigger=0.5)


def test_rebalancer_follows_a_workload_shift() -> None:
    """Synthetic drift: Zipf(1.2) routing whose hot experts change at step 200; per step each layer's
    16 experts get Poisson(top-k choices x popularity) tokens. The dynamic rebalancer re-places the
    layers within one window of the shift, and only the layers that drift."""
    rng = np.random.default_rng(4)
    before, after = zipf_load(4, 16, 1.2, seed=5, scale=1.0), zipf_load(4, 16, 1.2, seed=6, scale=1.0)
    after[0] = before[0]  # layer 0 keeps its routing
    start = omni_placement(before, 4, 5)
    config = RebalanceConfig(window=32, check_every=8)
    rebalancer = OmniRebalancer(start, config)
    history = []
    for step in range(400):
        popularity = before if step < 200 else after
        counts = rng.poisson(256 * popularity / popularity.sum(axis=1, keepdims=True))
        rebalancer.observe(counts)
        history.append(rebalancer.placement.imbalance(popularity).max())
    assert max(history[:200]) <= 1.10  # the start placement holds while routing does not change
    assert history[200] > 1.5  # the shift unbalances it ...
    assert max(history[200 + config.window + config.check_every :]) <= 1.10  # ... until it re-places
    events = [e for e in rebalancer.events if e.step > 200]
    assert events and events[0].step <= 200 + config.window
    assert all(0 not in e.layers for e in events)
    assert all(a < b for e in events for a, b in zip(e.after, e.before, strict=True))
    with pytest.raises(ValueError, match=r"counts must be \[4, 16\]"):
        rebalancer.observe(np.ones((4, 8)))


def test_the_estimate_remembers_one_workload_and_forgets_it_at_a_shift() -> None:
    """With ``shift_tv`` the load estimate is the history plus every step since, until a layer's
    window moves more than ``shift_tv`` (total variation) away from its older steps: then that layer
    forgets them and the estimate is its window alone. Steps older than the window lose half their
    weight every ``half_life`` steps."""
    prose = np.array([[6.0, 2.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    code = np.array([[1.0, 1.0, 2.0, 6.0], [1.0, 1.0, 1.0, 1.0]])  # layer 0 shifts, layer 1 does not
    start = omni_placement(prose, 2, 3)
    config = RebalanceConfig(window=4, check_every=4, shift_tv=0.2, trigger=1e9)
    rebalancer = OmniRebalancer(start, config, history=10 * prose)
    for _ in range(8):
        rebalancer.observe(prose)
    assert np.allclose(rebalancer.estimate(), 18 * prose) and rebalancer.shifts == []
    for _ in range(4):
        rebalancer.observe(code)
    assert rebalancer.shifts == [(12, [0])]
    estimate = rebalancer.estimate()
    assert np.allclose(estimate[0], 4 * code[0]) and np.allclose(estimate[1], 22 * prose[1])
    decaying = OmniRebalancer(start, RebalanceConfig(window=1, check_every=1, shift_tv=0.5, half_life=2.0),
                              history=prose)
    decaying.observe(prose)
    decaying.observe(prose)
    # The history has been older than the window for two steps (half_life 2: weight 1/2); the first
    # step has just left the window (weight 1); the second is the window.
    assert np.allclose(decaying.estimate(), prose * (0.5 + 1 + 1))
    with pytest.raises(ValueError, match=r"shift_tv must be in \(0, 1\]"):
        RebalanceConfig(shift_tv=0.0)
    with pytest.raises(ValueError, match=r"history must be \[2, 4\]"):
        OmniRebalancer(start, config, history=np.ones((1, 4)))


def test_bench_replays_synthetic_drift_through_each_policy() -> None:
    """``bench moe``'s replay: a policy's live placement step by step, omni's rebalancer migrating a
    layer per step after each decision."""
    traces = synthetic_traces(2, 16, 96, 256, 1.2, seed=0)
    config = RebalanceConfig(window=16, check_every=4)
    cases, curves = evaluate(traces, 4, 5, config, "zipf", "synthetic")
    case = {(c["policy"], c["phase"]): c for c in cases}
    assert case["static", "before"]["max_mean_load"] >= 2.0 and case["static", "after"]["max_mean_load"] >= 2.0
    assert case["omni", "before"]["max_mean_load"] <= 1.10 and case["eplb", "before"]["max_mean_load"] <= 1.10
    # After the shift EPLB's fixed placement is as unbalanced as no balancing; omni re-places.
    assert case["eplb", "after"]["max_mean_load"] >= 1.5
    assert case["omni", "after"]["max_mean_load"] <= 1.10
    recovery = case["omni", "after"]["recovery_steps"]
    assert recovery is not None and recovery <= 2 * config.window
    assert case["omni", "after"]["migrated_slots"] > 0 and case["eplb", "after"]["migrated_slots"] == 0
    assert len(curves["curves"]["omni"]) == 192 and curves["shift_step"] == 96


def test_a_run_too_short_to_settle_reports_the_phases_it_has() -> None:
    """With fewer serving steps than window + check + one migration per layer, the "settled" phase
    is empty: it is left out (it was a crash: the sum of no rank loads is the integer 0)."""
    traces = synthetic_traces(2, 16, 8, 64, 1.2, seed=0)
    cases, _ = evaluate(traces, 4, 5, RebalanceConfig(window=16, check_every=4), "zipf", "synthetic")
    assert {c["phase"] for c in cases} == {"before", "after"}


def test_bench_moe_needs_a_trained_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgecloud.cli import main

    assert main(["bench", "moe", "--model", str(tmp_path)]) == 2
    assert "heldout.json is missing" in capsys.readouterr().err
    assert main(["bench", "moe", "--spare-slots", "-1"]) == 2


def test_ep_timing_packs_the_hot_experts_and_summarizes_steps() -> None:
    """``bench moe-ep``: the deliberately bad ``packed`` placement puts the hottest experts on rank 0;
    the summary's paired ratio to ``static``, its bootstrap intervals and the line of step time over
    the busiest rank's pairs come out of the recorded steps."""
    from edgecloud.llm.moe.ep_timing import median_interval, packed_placement, plan_placements, summarize

    load = zipf_load(2, 8, 1.2, seed=1)
    packed = packed_placement(load, 2)
    assert_valid(packed, 4, one_per_rank=True)
    assert (packed.rank_loads(load).argmax(axis=1) == 0).all()
    plan = plan_placements(load, load, 2, 1)
    assert set(plan) == {"static", "eplb", "omni", "omni-fit", "packed"}
    assert (plan["omni-fit"].imbalance(load) <= plan["static"].imbalance(load)).all()
    assert (plan["packed"].imbalance(load) >= plan["static"].imbalance(load) - 1e-9).all()
    # Steps whose time is 10 ms + 0.01 ms per busiest-rank pair exactly, packed twice static's pairs.
    steps = {}
    for name, critical in (("static", 300.0), ("packed", 600.0)):
        steps[name] = [{"round": r, "tokens": 100 if first else 2, "prefill": first,
                        "critical_pairs": critical if first else 4.0, "mean_pairs": 250.0 if first else 4.0,
                        "seconds": (10 + 0.01 * (critical if first else 4.0)) / 1000}
                       for r in range(6) for first in (True, False, False)]
    report = summarize(steps, {"static": plan["static"], "packed": plan["packed"]}, 3, "m", 2)
    case = {c["policy"]: c for c in report["cases"]}
    assert case["static"]["prefill_step_ms"] == 13.0 and case["packed"]["prefill_step_ms"] == 16.0
    assert case["packed"]["prefill_vs_static"] == round(16 / 13, 4)
    assert case["packed"]["prefill_max_mean_load"] == 2.4 and case["static"]["rounds"] == 6
    assert case["static"]["tpot_ms"] == 10.04  # two decode steps over max_tokens - 1 = 2 tokens
    fit = report["fits"]["prefill"]
    assert fit["slope"] == pytest.approx(0.01) and fit["intercept"] == pytest.approx(10.0)
    assert fit["r"] == pytest.approx(1.0)
    assert "decode" not in report["fits"]  # every decode step has the same pairs: no line
    low, high = median_interval([1.0, 2.0, 3.0, 4.0, 100.0])
    assert 1.0 <= low <= 3.0 <= high <= 100.0
