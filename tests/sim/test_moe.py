"""Expert placement in the simulator (``edgecloud.sim.moe``): the busiest device sets a MoE step, a
balanced placement shortens it, OmniPlacement's rebalancer follows a workload shift and pays for the
weights it moves. Everything here is simulated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecloud.llm.moe.rebalance import RebalanceConfig
from edgecloud.llm.perf_model import Parallelism, PerfModel, StepShape
from edgecloud.sim.moe import ExpertPlacementModel, MigrationModel, RoutingModel, run_case
from edgecloud.sim.profiles import accelerator, load_model, model_from_config

SMALL_MOE = {
    "hidden_size": 1024, "intermediate_size": 2048, "moe_intermediate_size": 512, "num_hidden_layers": 4,
    "num_attention_heads": 8, "num_key_value_heads": 8, "vocab_size": 32000, "n_routed_experts": 16,
    "num_experts_per_tok": 2, "max_position_embeddings": 4096, "torch_dtype": "bfloat16",
}


def small_perf(devices: int = 4) -> PerfModel:
    return PerfModel(accelerator("h100"), model_from_config(SMALL_MOE, "small").profile, Parallelism(devices, True))


def test_a_balanced_placement_shortens_the_step_and_omni_follows_a_shift() -> None:
    routing = RoutingModel(zipf_s=1.2, shifts_s=(1.0,), layers=4, seed=3)
    config = RebalanceConfig(window=8, check_every=4)
    models = {policy: ExpertPlacementModel(small_perf(), policy, routing, 1, config) for policy in ("static", "eplb",
                                                                                                      "omni")}
    for step in range(80):
        now = 0.025 * step  # the shift comes at step 40
        for model in models.values():
            factor, dispatch, copy_s = model.step(4096, now)
            assert factor > 0.5 and dispatch >= 1.0 and copy_s >= 0.0
    before = {p: np.mean(m.tally.dispatch[:40]) for p, m in models.items()}
    after = {p: np.mean(m.tally.dispatch[-24:]) for p, m in models.items()}
    assert before["static"] > 1.5 and before["omni"] < 1.15 and before["eplb"] < 1.15
    assert after["eplb"] > 1.3  # placed for the old routing
    assert after["omni"] < 1.15 < after["static"]
    assert np.mean(models["static"].tally.factors) > np.mean(models["omni"].tally.factors)
    omni = models["omni"].tally
    assert omni.rebalances >= 1 and omni.layers_migrated >= 1 and omni.migrated_bytes > 0
    assert models["eplb"].tally.migrated_bytes == 0 == models["static"].tally.rebalances


def test_dispatch_and_expert_imbalance_stretch_only_their_parts() -> None:
    perf = PerfModel(accelerator("h100"), load_model("deepseek-v3").profile, Parallelism(64, True))
    batch = [StepShape(1, 1000)] * 4096
    base, stretched = perf.step_cost(batch), perf.step_cost(batch, moe_imbalance=2.0, dispatch_imbalance=1.5)
    assert stretched.network == pytest.approx(1.5 * base.network)
    assert stretched.layers == base.layers and stretched.attention == base.attention
    assert stretched.experts > 1.5 * base.experts  # the shared expert is not stretched
    tensor_parallel = PerfModel(accelerator("h100"), load_model("deepseek-v3").profile, Parallelism(64))
    assert tensor_parallel.step_cost(batch).network > base.network  # two all-reduces per layer on top


def test_migration_shows_only_what_the_step_does_not_hide() -> None:
    perf = small_perf()
    pipelined = ExpertPlacementModel(perf, "omni", RoutingModel(layers=2), migration=MigrationModel(1e9, True))
    blocking = ExpertPlacementModel(perf, "omni", RoutingModel(layers=2), migration=MigrationModel(1e9, False))
    assert pipelined.exposed(0.003, 0.010) == 0.0 and pipelined.exposed(0.013, 0.010) == pytest.approx(0.003)
    assert blocking.exposed(0.003, 0.010) == 0.003
    with pytest.raises(ValueError, match="policy must be one of static, eplb, omni"):
        ExpertPlacementModel(perf, "random")
    with pytest.raises(ValueError, match="shifts_s must be increasing"):
        RoutingModel(shifts_s=(2.0, 1.0))


def test_a_simulated_instance_serves_with_expert_placement(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(SMALL_MOE))
    case = run_case(str(tmp_path), "h100", 4, "omni", 32, prompt_len=32, output_len=8,
                    routing=RoutingModel(zipf_s=1.0, layers=4))
    assert case["simulated"] and case["mode"] == "sim" and case["requests"] == 64
    assert case["tpot_ms"] > 0 and case["expert_time_factor"]["steps"] > 8
    assert case["slots_per_rank"] == 5
