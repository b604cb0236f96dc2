"""The multi-machine launch, exercised as torchrun runs it: several processes on this machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgecloud.cli import main
from edgecloud.splitlearn.latency import Plan, UEConfig
from edgecloud.splitlearn.launch import config_from_json, config_to_json
from edgecloud.splitlearn.runtime import TrainConfig, UEFault


def test_torchrun_starts_a_bs_and_two_ues_that_train_together(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
        "-m", "edgecloud.splitlearn.launch",
        "--dataset", "digits", "--model", "mlp", "--ues", "1:20,1:20", "--batch", "8",
        "--cut", "2", "--micro-batches", "2,1", "--bandwidth-mhz", "1000",
        "--max-rounds", "6", "--syncs-per-epoch", "89", "--json", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "BS: plan published (cut 2, micro-batches [2, 1])" in done.stdout
    result = json.loads(out.read_text())
    assert result["participants"] == [[0, 1]] * 6
    assert [e[0] for e in result["evaluations"]] == [1, 2, 3, 4, 5, 6]  # 89 averagings an epoch: every round
    assert result["accuracy"] == result["evaluations"][-1][2]
    assert result["config"]["plan"] == {
        "schedule": "c2p2sl", "cut": 2, "micro_batches": [2, 1], "uplink_shares": [0.5, 0.5]
    }  # fmt: skip


def test_the_plan_travels_to_the_ues_intact() -> None:
    config = TrainConfig(
        model="cnn",
        plan=Plan("c2p2sl", 3, (2, 5), (0.25, 0.75)),
        ues=(UEConfig(5.0, 5.0), UEConfig(2.5, 15.0)),
        bandwidth_hz=2e6,
        faults=(UEFault(1, 3, "hang"),),
        dataset="mnist",
        syncs_per_epoch=4,
    )
    assert config_from_json(config_to_json(config)) == config


def test_node_outside_torchrun_says_how_to_start_it(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert "RANK" not in os.environ
    assert main(["splitlearn", "node", "--dataset", "digits"]) == 1
    assert "RANK is not set: start this command with torchrun" in capsys.readouterr().err
