"""Real multi-process runs: a BS process and UE processes over gloo on loopback."""

import numpy as np
import pytest
import torch
from torch import nn

from edgecloud.splitlearn.data import load_split, rounds_per_epoch, ue_batch
from edgecloud.splitlearn.latency import Plan, UEConfig
from edgecloud.splitlearn.models import build_model
from edgecloud.splitlearn.runtime import Evaluation, TrainConfig, TrainResult, UEFault, train

FAST_LINK_HZ = 1e9  # pacing still applies, but transfers take microseconds


def _centralised(model: str, num_ues: int, batch: int, rounds: int, lr: float) -> nn.Sequential:
    """Plain SGD on the union of every UE's batch, one step per round: what split training must equal."""
    reference = build_model(model, 0, torch.float64)
    train_set = load_split("digits", 0, torch.float64).train
    for r in range(rounds):
        batches = [ue_batch(train_set, num_ues, k, batch, r) for k in range(num_ues)]
        x, y = torch.cat([b.x for b in batches]), torch.cat([b.y for b in batches])
        reference.zero_grad()
        nn.functional.cross_entropy(reference(x), y).backward()
        with torch.no_grad():
            for p in reference.parameters():
                assert p.grad is not None
                p -= lr * p.grad
    return reference


def _assert_same_parameters(reference: nn.Sequential, result: TrainResult) -> None:
    for name, p in reference.named_parameters():
        assert abs(p.detach().numpy() - result.parameters[name]).max() < 1e-9, name


def _test_accuracy(parameters: dict[str, np.ndarray], model: str) -> float:
    network = build_model(model, 0, torch.float64)
    network.load_state_dict({n: torch.from_numpy(p) for n, p in parameters.items()})
    test = load_split("digits", 0, torch.float64).test
    with torch.no_grad():
        return float((network(test.x).argmax(dim=1) == test.y).double().mean())


def test_one_ue_split_gradient_equals_the_centralised_gradient() -> None:
    """One UE, one round of plain SGD with lr=1: the parameter change is minus the gradient."""
    batch = 24
    config = TrainConfig(
        model="cnn",
        plan=Plan("c2p2sl", 3, (3,), (1.0,)),
        ues=(UEConfig(40.0, 30.0),),  # slow: it is still computing forwards when gradients come back
        bandwidth_hz=FAST_LINK_HZ,
        batch_per_ue=batch,
        max_rounds=1,
        lr=1.0,
        momentum=0.0,
        dtype="float64",
    )
    result = train(config, timeout_s=120)
    assert result.participants == [(0,)]
    assert set(result.ue_compute_cpu_s) == {0} and result.ue_compute_cpu_s[0] > 0
    # Every computation's CPU time, by kind and micro-batch size (what the bench's pilots fit).
    ue_costs = result.ue_compute_costs[0].totals
    counts = {key: count for key, (count, _) in ue_costs.items()}
    assert counts == {("forward", 8): 3, ("backward", 8): 3, ("step", 24): 1}
    assert sum(total for _, total in ue_costs.values()) == pytest.approx(result.ue_compute_cpu_s[0])
    bs_costs = result.bs_compute_costs.totals
    assert {key: count for key, (count, _) in bs_costs.items()} == {("serve", 8): 3, ("step", 24): 1}
    assert all(total > 0 for _, total in [*ue_costs.values(), *bs_costs.values()])
    walls = result.bs_compute_wall_s.totals  # the BS's serves in wall time: never less than their CPU
    assert walls[("serve", 8)][0] == 3 and walls[("serve", 8)][1] >= 0.99 * bs_costs[("serve", 8)][1]
    # Every message, timed on both ends: down the welcome (model, round), 3 gradients, the sync's
    # request and average; up 3 activations and the client model.
    hand_offs = result.hand_offs
    assert hand_offs.messages == 7 + 4
    assert hand_offs.latency_s and all(0 < t < 5 for t in hand_offs.latency_s)
    # The BS waited for the first activation (the UE's forward takes 40x its CPU time): timed too.
    assert np.isfinite(result.message_logs[0][1][:, 2]).any()
    # The UE asks for the first gradient only after two more forwards (each 40x its CPU time).
    assert hand_offs.late_receive_s and all(0 < t < 5 for t in hand_offs.late_receive_s)
    _assert_same_parameters(_centralised("cnn", 1, batch, 1, lr=1.0), result)


@pytest.mark.parametrize(
    ("schedule", "micro_batches"), [("sequential", (1, 1, 1)), ("c2p2sl", (2, 1, 3))]
)
def test_several_ues_train_exactly_the_centralised_model(schedule: str, micro_batches: tuple[int, ...]) -> None:
    """Three UEs, two rounds, averaging after each: split training is SGD on the union of the batches.

    This is what guards the BS's server-gradient average (divided by the number of UEs that
    contributed) and the client-model average sent back to every UE: a wrong divisor, a sum
    instead of a mean, or a UE that keeps its own model instead of the average all change the
    parameters by far more than the tolerance. Differing micro-batch counts check the
    accumulation across micro-batches.
    """
    num_ues, batch, lr = 3, 8, 0.5
    per_epoch = rounds_per_epoch(len(load_split("digits", 0).train), num_ues, batch)
    config = TrainConfig(
        model="mlp",
        plan=Plan(schedule, 2, micro_batches, (1 / 3,) * 3),  # type: ignore[arg-type]
        ues=tuple(UEConfig(1.0, 20.0) for _ in range(num_ues)),
        bandwidth_hz=FAST_LINK_HZ,
        batch_per_ue=batch,
        max_rounds=2,
        lr=lr,
        momentum=0.0,
        dtype="float64",
        syncs_per_epoch=per_epoch,  # average (and evaluate) after every round
    )
    result = train(config, timeout_s=180)
    assert result.participants == [(0, 1, 2)] * 2
    reference = _centralised("mlp", num_ues, batch, 2, lr)
    _assert_same_parameters(reference, result)
    assert [e.round for e in result.evaluations] == [1, 2]
    # Each evaluation is of the average the BS holds before it sends it back at the end of the round.
    assert result.evaluations[0].time_s <= result.round_end_s[0] <= result.evaluations[1].time_s <= result.time_s
    assert result.accuracy == result.evaluations[-1].accuracy == _test_accuracy(result.parameters, "mlp")


def _two_ue_config(**overrides: object) -> TrainConfig:
    base: dict[str, object] = {
        "model": "mlp",
        "plan": Plan("c2p2sl", 2, (2, 2), (0.5, 0.5)),
        "ues": (UEConfig(1.0, 20.0), UEConfig(1.0, 20.0)),
        "bandwidth_hz": FAST_LINK_HZ,
        "batch_per_ue": 8,
        "max_rounds": 5,
    }
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_crashed_ue_is_dropped_and_served_again_after_it_rejoins() -> None:
    config = _two_ue_config(faults=(UEFault(ue=1, round=1, kind="crash"),), await_rejoin_s=120.0)
    result = train(config, timeout_s=240)
    log = "\n".join(result.events)
    assert "launcher: UE1 exited with code 17; restarted" in log
    assert "UE1 dropped" in log and "(round 1)" in log
    assert "UE1 rejoined (incarnation 2), served from round 2" in log
    assert len(result.participants) == 5
    # Round 1 went on with UE0 (UE1 had sent one micro-batch before dying); UE1 is back from round 2.
    assert all(0 in p for p in result.participants)
    assert result.participants[2:] == [(0, 1)] * 3


# A hang can only be told from a slow peer by silence, so this test needs the wall clock. UE0
# answers within milliseconds on a fast link; only a 5 s stall of the whole machine could make
# the BS drop it too, and the test then fails loudly rather than passing wrongly.
HANG_TIMEOUT_S = 5.0


# real_clock: a hang is told from a slow peer only by silence on the wall clock (see above)
@pytest.mark.real_clock
def test_hung_ue_times_out_and_the_round_goes_on() -> None:
    config = _two_ue_config(
        faults=(UEFault(ue=1, round=1, kind="hang"),), ue_timeout_s=HANG_TIMEOUT_S, restart_crashed_ues=False
    )
    result = train(config, timeout_s=240)
    log = "\n".join(result.events)
    assert f"UE1 dropped: no message for {HANG_TIMEOUT_S:.1f}s in round 1" in log
    assert result.participants[0] == (0, 1)
    assert result.participants[2:] == [(0,)] * 3
    # The accuracy reported is that of the model returned, evaluated independently.
    assert result.accuracy == _test_accuracy(result.parameters, "mlp")


def test_time_to_target_is_the_first_evaluation_at_or_above_it() -> None:
    evaluations = [Evaluation(10, 1.0, 0.5), Evaluation(20, 2.0, 0.91), Evaluation(30, 3.0, 0.9)]
    result = TrainResult(3.0, [1.0, 2.0, 3.0], [], 0.9, [], {}, evaluations)
    assert result.time_to(0.9) == evaluations[1]
    assert result.time_to(0.91) == evaluations[1]
    assert result.time_to(0.5) == evaluations[0]
    assert result.time_to(0.95) is None


def test_bad_config_is_rejected_before_any_process_starts() -> None:
    with pytest.raises(ValueError, match=r"plan.cut must be in 1\.\.3 for model 'mlp', got 7"):
        train(_two_ue_config(plan=Plan("c2p2sl", 7, (1, 1), (0.5, 0.5))))
    with pytest.raises(ValueError, match="one micro-batch count and one uplink share per UE"):
        train(_two_ue_config(plan=Plan("c2p2sl", 2, (1,), (0.5,))))
    with pytest.raises(ValueError, match="syncs_per_epoch must be >= 1, got 0"):
        train(_two_ue_config(syncs_per_epoch=0))
    with pytest.raises(ValueError, match="dataset must be one of"):
        train(_two_ue_config(dataset="cifar"))
