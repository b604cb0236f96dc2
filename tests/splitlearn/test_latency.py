from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.splitlearn.latency import (
    Plan,
    Scenario,
    StageTimes,
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


def _host_cpu_s(sc: Scenario, plan: Plan, rounds: int) -> float:
    """Host CPU seconds of every computation of ``rounds`` rounds: UEs' before their slowdown, and the BS's."""
    stages = StageTimes(sc, plan)
    bs = sum(stages.bs(size) for m in plan.micro_batches for size in micro_batch_sizes(sc.batch_per_ue, m))
    return rounds * (sum(stages.ue_cpu_per_round(k) for k in range(sc.num_ues)) + bs + stages.bs_step())


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 4),
    st.lists(st.integers(1, 6), min_size=3, max_size=3),
    st.floats(0.2, 50),
    st.integers(1, 5),
    st.floats(0.0, 1e-3),
)
def test_a_core_per_device_is_the_pure_replay(
    cnn_profile: ModelProfile,
    scenario: Callable[..., Scenario],
    cut: int,
    micro_batches: list[int],
    bandwidth_mhz: float,
    rounds_per_sync: int,
    latency: float,
) -> None:
    """With as many host cores as devices no computation ever waits for one, so the shared-host
    replay must time the schedule exactly as the pure replay does, syncs and fill/drain included."""
    sc = replace(scenario(cnn_profile, UES, bandwidth_mhz), message_latency_s=latency)
    plan = Plan("c2p2sl", cut, tuple(micro_batches), (0.5, 0.2, 0.3))
    pure = simulate(sc, plan, 7, rounds_per_sync)
    shared = simulate(replace(sc, host_cores=sc.num_ues + 1), plan, 7, rounds_per_sync)
    assert shared.round_end_s == pytest.approx(pure.round_end_s, rel=1e-12, abs=1e-12)
    assert shared.total_s == pytest.approx(pure.total_s, rel=1e-12)


def test_shared_cores_queue_ready_computations(mlp_profile: ModelProfile, scenario: Callable[..., Scenario]) -> None:
    """Compute-bound UEs as fast as the host: one host core must run every computation in turn
    (at least the total host CPU time), two cores at least half of it; the pure model, with a
    processor per device, overlaps them and predicts less than either."""
    ues = (UEConfig(1.0, 30.0),) * 3
    sc = scenario(mlp_profile, ues, 1000.0)
    plan = Plan("c2p2sl", 1, (4, 4, 4), (1 / 3, 1 / 3, 1 / 3))
    rounds = 6
    cpu = _host_cpu_s(sc, plan, rounds)
    pure = simulate(sc, plan, rounds, rounds).total_s
    one = simulate(replace(sc, host_cores=1), plan, rounds, rounds).total_s
    two = simulate(replace(sc, host_cores=2), plan, rounds, rounds).total_s
    assert one >= cpu
    assert two >= cpu / 2
    assert pure < 0.8 * one and pure < two <= one


def test_slowed_devices_absorb_waits_for_a_core_in_their_slack(
    cnn_profile: ModelProfile, scenario: Callable[..., Scenario]
) -> None:
    """A UE 40x slower than the host holds a core 1/40 of its computing time: two cores leave the
    schedule of three such UEs and the BS almost as the pure model times it, while a UE as fast
    as the host would queue."""
    slow = scenario(cnn_profile, (UEConfig(40.0, 20.0),) * 3, 1000.0)
    plan = Plan("c2p2sl", 3, (4, 4, 4), (1 / 3, 1 / 3, 1 / 3))
    pure = simulate(slow, plan, 5, 5).total_s
    assert simulate(replace(slow, host_cores=2), plan, 5, 5).total_s == pytest.approx(pure, rel=0.02)
    with pytest.raises(ValueError, match=r"host_cores must be >= 0 \(0: unlimited\), got -1"):
        replace(slow, host_cores=-1)


def test_sequential_split_learning_never_queues_for_a_core(
    cnn_profile: ModelProfile, scenario: Callable[..., Scenario]
) -> None:
    sc = scenario(cnn_profile, (UEConfig(1.0, 20.0),) * 3, 1000.0)
    plan = Plan("sequential", 2, (1, 1, 1), (1 / 3, 1 / 3, 1 / 3))
    one = simulate(replace(sc, host_cores=1), plan, 4, 2)
    assert one == simulate(sc, plan, 4, 2)


@pytest.mark.parametrize("m", [2, 4, 8])
def test_a_busy_ue_pays_the_late_receive_once_per_gradient(
    cnn_profile: ModelProfile, scenario: Callable[..., Scenario], m: int
) -> None:
    """A compute-bound UE (10x slower, a link of 100 GHz) is still computing its forwards when
    every gradient comes back, so it takes all m of them late: the prediction grows by exactly
    m late receives a round. A UE that waits for its gradient (one micro-batch: it asks right
    after its forward, the BS's work before the gradient exists) pays none."""
    sc = scenario(cnn_profile, (UEConfig(10.0, 20.0),), 1e5)
    plan = Plan("c2p2sl", 2, (m,), (1.0,))
    rounds, late = 5, 1e-4
    assert StageTimes(sc, plan).bs(16) > late
    added = simulate(replace(sc, late_receive_s=late), plan, rounds, 3).total_s - simulate(sc, plan, rounds, 3).total_s
    assert added == pytest.approx(rounds * m * late, rel=1e-9)
    shared = simulate(replace(sc, late_receive_s=late, host_cores=2), plan, rounds, 3).total_s
    assert shared == pytest.approx(simulate(sc, plan, rounds, 3).total_s + added, rel=1e-9)
    one = Plan("c2p2sl", 2, (1,), (1.0,))
    assert simulate(replace(sc, late_receive_s=late), one, rounds, 3) == simulate(sc, one, rounds, 3)
    with pytest.raises(ValueError, match=r"late_receive_s must be >= 0, got -0.0001"):
        replace(sc, late_receive_s=-late)


def test_the_micro_batch_overhead_is_paid_once_per_micro_batch_on_the_ue(
    cnn_profile: ModelProfile, scenario: Callable[..., Scenario]
) -> None:
    """Sequential SL is one chain: each UE's one micro-batch a round adds the overhead once. A
    compute-bound pipelined UE pays it once per micro-batch, so more micro-batches pay more; it
    is wall time on the UE's timeline, not host CPU (the pilot's CPU comparison leaves it out)."""
    sc = scenario(cnn_profile, UES, 5.0)
    o = 2e-3
    slow = replace(sc, micro_batch_overhead_s=o)
    seq = Plan("sequential", 2, (1, 1, 1), (0.3, 0.3, 0.4))
    base = simulate(sc, seq, rounds=10, rounds_per_sync=5).total_s
    assert simulate(slow, seq, rounds=10, rounds_per_sync=5).total_s - base == pytest.approx(10 * 3 * o)
    assert StageTimes(slow, seq).ue_cpu_per_round(0) == pytest.approx(StageTimes(sc, seq).ue_cpu_per_round(0))
    compute_bound = scenario(cnn_profile, (UEConfig(40, 20),), 20.0)
    extra = []
    for m in (2, 8):
        plan = Plan("c2p2sl", 2, (m,), (1.0,))
        without = simulate(compute_bound, plan, rounds=4, rounds_per_sync=4).total_s
        with_it = simulate(replace(compute_bound, micro_batch_overhead_s=o), plan, rounds=4, rounds_per_sync=4).total_s
        extra.append(with_it - without)
    assert extra[0] == pytest.approx(4 * 2 * o, rel=0.05)
    assert extra[1] == pytest.approx(4 * 8 * o, rel=0.05)
    # The same on the shared-host replay, where the overhead holds no core.
    shared = replace(sc, host_cores=2)
    plan = Plan("c2p2sl", 2, (3, 2, 4), (0.3, 0.3, 0.4))
    slower = simulate(replace(shared, micro_batch_overhead_s=o), plan, 6, 3).total_s
    assert slower > simulate(shared, plan, 6, 3).total_s
