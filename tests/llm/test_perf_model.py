"""The step cost model: dense costs by hand, and the parts the simulator added (experts, latent
attention, several devices, per-sequence overhead) behaving as their formulas say."""

from __future__ import annotations

import math

import pytest

from edgecloud.llm.perf_model import (
    HardwareProfile,
    MLAProfile,
    ModelProfile,
    MoEProfile,
    Parallelism,
    PerfModel,
    StepShape,
)

HW = HardwareProfile("test", peak_flops=100e12, memory_bandwidth=1e12, network_bandwidth=100e9,
                     inter_node_bandwidth=10e9, devices_per_node=4, network_latency_s=1e-5)
DENSE = ModelProfile(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16,
                     vocab_size=100, weight_bytes_per_param=2, kv_bytes_per_element=2)


def test_a_dense_decode_step_costs_what_the_roofline_formula_says() -> None:
    perf = PerfModel(HW, DENSE)
    cost = perf.step_cost([StepShape(1, 10)])
    h, q, kv, inter = 64, 64, 32, 128
    per_layer = sum(max(2 * rows * cols / 100e12, (rows * cols * 2 + (rows + cols) * 2) / 1e12)
                    for rows, cols in ((h, q + 2 * kv), (q, h), (h, 2 * inter), (inter, h)))
    assert cost.layers == pytest.approx(2 * per_layer)
    attention = max(4 * 4 * 16 * 10 / 100e12, (10 * 2 * kv * 2 + (2 * q * 2 + 2 * kv * 2)) / 1e12)
    assert cost.attention == pytest.approx(2 * attention)
    assert cost.experts == cost.network == cost.overhead == 0.0
    assert DENSE.kv_bytes_per_token == 2 * 2 * 32 * 2


def test_overheads_count_per_step_per_layer_and_per_sequence() -> None:
    hw = HW.calibrated(step_overhead_s=1e-3, layer_overhead_s=1e-4, seq_overhead_s=1e-5)
    cost = PerfModel(hw, DENSE).step_cost([StepShape(1, 10)] * 3)
    assert cost.overhead == pytest.approx(1e-3 + 2 * 1e-4 + 3 * 1e-5)


def moe_model(**changes: object) -> ModelProfile:
    base = dict(num_layers=4, hidden_size=64, intermediate_size=256, num_heads=4, num_kv_heads=4, head_dim=16,
                vocab_size=100, weight_bytes_per_param=1, kv_bytes_per_element=2,
                moe=MoEProfile(num_experts=16, experts_per_token=2, expert_intermediate_size=32, num_shared_experts=1,
                               num_dense_layers=1))
    base.update(changes)
    return ModelProfile(**base)  # type: ignore[arg-type]


def test_experts_cost_grows_with_the_experts_a_step_touches_and_with_imbalance() -> None:
    model = moe_model()
    assert model.num_moe_layers == 3
    dense_layer = model.layer_params
    attention = sum(r * c for r, c in model.attention_matrices)
    assert model.num_params == dense_layer + 3 * (attention + 17 * 3 * 64 * 32) + 100 * 64
    perf = PerfModel(HW, model)
    one = perf.step_cost([StepShape(1, 8)])
    many = perf.step_cost([StepShape(1, 8)] * 64)
    # A decode step reads the weights of the experts its tokens touch: one token touches 2 of 16,
    # 64 tokens nearly all of them.
    assert many.experts > 5 * one.experts
    skewed = perf.step_cost([StepShape(1, 8)] * 64, moe_imbalance=2.0)
    shared = 3 * perf._dense(64, 64, 64, 1) + 3 * perf._dense(64, 32, 64, 1)
    assert skewed.experts - shared == pytest.approx(2 * (many.experts - shared))


def test_latent_attention_caches_one_shared_latent_per_token_and_layer() -> None:
    mla = MLAProfile(q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8)
    model = moe_model(mla=mla, num_kv_heads=4)
    assert model.kv_elements_per_token_layer == 16 + 4
    assert model.kv_bytes_per_token == 4 * 20 * 2
    assert model.attention_flops_per_pair == 2 * 4 * (2 * 16 + 4)


def test_spreading_an_instance_over_devices_splits_the_work_and_pays_the_links() -> None:
    model = moe_model()
    batch = [StepShape(1, 100)] * 32
    one = PerfModel(HW, model).step_cost(batch)
    four = PerfModel(HW, model, Parallelism(4)).step_cost(batch)
    eight = PerfModel(HW, model, Parallelism(8)).step_cost(batch)
    assert four.layers < one.layers and four.network > 0 and one.network == 0
    # Within a node (4 devices) the collectives use the node's links; across nodes the slower ones.
    per_all_reduce = 1e-5 + 2 * 3 / 4 * 32 * 64 * 1 / 100e9
    per_all_to_all = 1e-5 + 3 / 4 * 32 * 2 * 64 * 1 / 4 / 100e9
    assert four.network == pytest.approx(2 * 4 * per_all_reduce + 2 * 3 * per_all_to_all)
    assert eight.network > four.network
    with pytest.raises(ValueError, match="network_bandwidth is needed"):
        PerfModel(HardwareProfile("lonely", 1e12, 1e12), model, Parallelism(2)).step_cost(batch)
    with pytest.raises(ValueError, match="devices must be >= 1"):
        Parallelism(0)


def test_the_roofline_is_a_lower_bound_of_the_step_time() -> None:
    perf = PerfModel(HW.calibrated(matmul_efficiency=0.5, memory_efficiency=0.5, step_overhead_s=1e-4), DENSE)
    for batch in ([StepShape(300, 300)], [StepShape(1, 50)] * 8, [StepShape(20, 70), StepShape(1, 9)]):
        assert perf.roofline_time(batch) <= perf.step_time(batch)
        assert math.isfinite(perf.step_time(batch))
