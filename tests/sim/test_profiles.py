"""Model profiles from published config.json values, accelerator presets, and the calibration fit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgecloud.llm.perf_model import HardwareProfile, Parallelism, PerfModel, StepShape
from edgecloud.sim.calibrate import StepSample, fit_factors, median_per_shape
from edgecloud.sim.profiles import (
    MODEL_CONFIGS,
    CalibratedProfile,
    ProfileError,
    accelerator,
    kv_blocks,
    load_hardware,
    load_model,
)


@pytest.mark.parametrize(("name", "params", "kv_kib"), [
    ("llama-3-8b", 7.50e9, 128),  # 8.03B with the input embeddings, which no step reads as a matrix
    ("llama-3-70b", 69.5e9, 320),
    ("qwen2.5-7b", 7.07e9, 56),
    ("deepseek-v3", 671e9, 68.6),  # 671B total, 37B active; the latent KV of 61 layers
])
def test_published_models_have_their_known_sizes(name: str, params: float, kv_kib: float) -> None:
    model = load_model(name)
    assert model.profile.num_params == pytest.approx(params, rel=0.01)
    assert model.profile.kv_bytes_per_token / 1024 == pytest.approx(kv_kib, rel=0.01)


def test_deepseek_v3_is_a_mixture_of_experts_with_latent_attention() -> None:
    model = load_model("deepseek-v3")
    moe, mla = model.profile.moe, model.profile.mla
    assert moe is not None and (moe.num_experts, moe.experts_per_token, moe.num_shared_experts) == (256, 8, 1)
    assert model.profile.num_moe_layers == 58 and model.profile.weight_bytes_per_param == 1  # fp8 weights
    assert mla is not None and mla.kv_lora_rank == 512
    assert model.max_model_len == 163840
    with pytest.raises(ProfileError, match="does not fit on 1 x NVIDIA H100"):
        kv_blocks(accelerator("h100"), model, Parallelism(1), 16)
    assert kv_blocks(accelerator("h100"), model, Parallelism(16), 16) > 100_000


def test_a_config_file_or_directory_is_read_and_bad_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(MODEL_CONFIGS["qwen2.5-7b"]))
    assert load_model(str(tmp_path)).profile.num_kv_heads == 4
    with pytest.raises(ProfileError, match="not one of llama-3-8b"):
        load_model("gpt-5")
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(ProfileError, match="missing 'num_attention_heads'"):
        load_model(str(tmp_path))
    with pytest.raises(ProfileError, match="not one of a100, h100, h200, ascend910c and no such file"):
        load_hardware("tpu")


def test_a_calibrated_profile_round_trips_through_json(tmp_path: Path) -> None:
    profile = CalibratedProfile(HardwareProfile("cpu", 1e11, 1e10, matmul_efficiency=0.3), "demo", 1, "float32",
                                0.05, 0.1, 80, 1e8, 1e-3, 2e-3, {"model": "demo", "num_threads": 1}, "EPYC", (1.0, 2.0))
    path = tmp_path / "cpu.json"
    path.write_text(json.dumps(profile.to_json()))
    hardware, loaded = load_hardware(str(path))
    assert loaded == profile and hardware.matmul_efficiency == 0.3
    assert loaded.engine_config().num_threads == 1
    path.write_text("{}")
    with pytest.raises(ProfileError, match="not a calibrated profile"):
        load_hardware(str(path))


def test_the_fit_recovers_the_factors_that_generated_the_steps() -> None:
    truth = HardwareProfile("cpu", 50e9, 10e9, matmul_efficiency=0.4, memory_efficiency=0.25, step_overhead_s=2e-3,
                            seq_overhead_s=5e-5)
    model = load_model(str(Path(__file__).parent / "data" / "small_config.json")).profile
    perf = PerfModel(truth, model)
    shapes = [[StepShape(n, n)] for n in (4, 32, 128, 512)] + [[StepShape(1, c)] * b for b in (1, 8, 64)
                                                              for c in (16, 256)]
    samples = [StepSample(s, perf.step_time(s)) for s in shapes]
    fitted, errors = fit_factors(HardwareProfile("cpu", 50e9, 10e9), model, samples)
    assert np.max(np.abs(errors)) < 1e-3
    for name in ("matmul_efficiency", "memory_efficiency", "step_overhead_s", "seq_overhead_s"):
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=0.02)


def test_repeated_shapes_count_once_at_their_median() -> None:
    shape = [StepShape(1, 5)]
    merged = median_per_shape([StepSample(shape, 1.0), StepSample(shape, 9.0), StepSample(shape, 2.0),
                               StepSample([StepShape(2, 2)], 3.0)])
    assert sorted(s.seconds for s in merged) == [2.0, 3.0]
