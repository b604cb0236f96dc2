"""Real multi-process runs: a BS process and UE processes over gloo on loopback."""

import pytest
import torch
from torch import nn

from edgecloud.splitlearn.data import load_digits_split, ue_batch
from edgecloud.splitlearn.latency import Plan, UEConfig
from edgecloud.splitlearn.models import build_model
from edgecloud.splitlearn.runtime import TrainConfig, UEFault, train

FAST_LINK_HZ = 1e9  # pacing still applies, but transfers take microseconds


@pytest.mark.parametrize(
    ("schedule", "model", "cut", "micro_batches"),
    [("sequential", "mlp", 2, 1), ("c2p2sl", "mlp", 2, 1), ("c2p2sl", "mlp", 2, 4), ("c2p2sl", "cnn", 3, 3)],
)
def test_split_gradients_equal_centralised_gradients(
    schedule: str, model: str, cut: int, micro_batches: int
) -> None:
    """One UE, one round of plain SGD with lr=1: the parameter change is minus the gradient."""
    batch = 24
    config = TrainConfig(
        model=model,
        plan=Plan(schedule, cut, (micro_batches,), (1.0,)),  # type: ignore[arg-type]
        ues=(UEConfig(1.0, 30.0),),
        bandwidth_hz=FAST_LINK_HZ,
        batch_per_ue=batch,
        max_rounds=1,
        lr=1.0,
        momentum=0.0,
        dtype="float64",
    )
    result = train(config, timeout_s=120)

    reference = build_model(model, config.seed, torch.float64)
    data = load_digits_split(config.seed, torch.float64)
    x = ue_batch(data.train, 1, 0, batch, 0)
    nn.functional.cross_entropy(reference(x.x), x.y).backward()
    assert result.participants == [(0,)]
    assert set(result.ue_compute_cpu_s) == {0} and result.ue_compute_cpu_s[0] > 0
    for name, p in reference.named_parameters():
        split_gradient = p.detach().numpy() - result.parameters[name]
        assert p.grad is not None
        assert abs(split_gradient - p.grad.numpy()).max() < 1e-6, name


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


def test_hung_ue_times_out_and_the_round_goes_on() -> None:
    config = _two_ue_config(
        faults=(UEFault(ue=1, round=1, kind="hang"),), ue_timeout_s=1.0, restart_crashed_ues=False
    )
    result = train(config, timeout_s=240)
    log = "\n".join(result.events)
    assert "UE1 dropped: no message for 1.0s in round 1" in log
    assert result.participants[0] == (0, 1)
    assert result.participants[2:] == [(0,)] * 3
    assert 0.0 <= result.accuracy <= 1.0


def test_bad_config_is_rejected_before_any_process_starts() -> None:
    with pytest.raises(ValueError, match=r"plan.cut must be in 1\.\.3 for model 'mlp', got 7"):
        train(_two_ue_config(plan=Plan("c2p2sl", 7, (1, 1), (0.5, 0.5))))
    with pytest.raises(ValueError, match="one micro-batch count and one uplink share per UE"):
        train(_two_ue_config(plan=Plan("c2p2sl", 2, (1,), (0.5,))))
