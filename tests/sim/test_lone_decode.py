"""One-sequence decode steps (the engine's one-call decoder) are priced apart from every other step,
with factors fitted on their own profiled steps; the simulator, its fast path and the step-log
report use that price."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from edgecloud.cluster.policies import make_policy
from edgecloud.llm.config import EngineConfig
from edgecloud.llm.perf_model import HardwareProfile, ModelProfile, PerfModel, StepShape
from edgecloud.sim.calibrate import StepSample, fit_two_paths, local_model_profile, step_class
from edgecloud.sim.incremental import AggregatePricer
from edgecloud.sim.instance import SimEngineConfig, SimInstance
from edgecloud.sim.profiles import CalibratedProfile, LoneDecodePerfModel, is_lone_decode, load_model, local_twin
from edgecloud.sim.simulator import ClusterSimulator, SimRequest
from edgecloud.sim.validate import step_report

BATCHED = HardwareProfile("cpu", 50e9, 10e9, matmul_efficiency=0.4, memory_efficiency=0.25, step_overhead_s=2e-3,
                          seq_overhead_s=5e-5)
# The one-call decoder: weights streamed near the bandwidth, little host work (a fraction of the batched step)
LONE = BATCHED.calibrated(memory_efficiency=0.8, step_overhead_s=1e-4)


def small_model() -> ModelProfile:
    return load_model(str(Path(__file__).parent / "data" / "small_config.json")).profile


def profile_samples(model: ModelProfile) -> list[StepSample]:
    """Steps as the engine times them: each path at its own cost."""
    batched, lone = PerfModel(BATCHED, model), PerfModel(LONE, model)
    shapes = ([[StepShape(n, n)] for n in (4, 32, 128, 512)]
              + [[StepShape(1, c)] * b for b in (2, 8, 64) for c in (16, 256)]
              + [[StepShape(1, 64)] * 4 + [StepShape(48, 48)]])
    samples = [StepSample(s, batched.step_time(s)) for s in shapes]
    samples += [StepSample([StepShape(1, c)], lone.step_time([StepShape(1, c)])) for c in (8, 64, 256, 512, 1000)]
    return samples


def test_step_classes() -> None:
    assert is_lone_decode([StepShape(1, 40)]) and step_class([StepShape(1, 40)]) == "lone decode"
    assert not is_lone_decode([StepShape(1, 1)])  # a one-token prompt is a prefill
    assert not is_lone_decode([StepShape(1, 40)] * 2) and step_class([StepShape(1, 40)] * 2) == "decode"
    assert step_class([StepShape(16, 16)]) == "prefill"
    assert step_class([StepShape(1, 40), StepShape(16, 16)]) == "mixed"


def test_one_sequence_decode_steps_are_fitted_on_their_own_points() -> None:
    model = small_model()
    samples = profile_samples(model)
    fit = fit_two_paths(HardwareProfile("cpu", 50e9, 10e9), model, samples)
    assert fit.lone_decode is not None
    assert np.max(np.abs(fit.errors)) < 1e-3  # every class explained, the lone steps included
    for name in ("matmul_efficiency", "memory_efficiency", "step_overhead_s", "seq_overhead_s"):
        assert getattr(fit.hardware, name) == pytest.approx(getattr(BATCHED, name), rel=0.02)
    for name in ("memory_efficiency", "step_overhead_s"):
        assert getattr(fit.lone_decode, name) == pytest.approx(getattr(LONE, name), rel=0.02)
    errors = fit.errors_by_class()
    assert set(errors) == {"lone decode", "decode", "prefill", "mixed"} and errors["lone decode"][2] == 5
    # One factor set for both paths cannot price the lone step: the batched fit overprices it ~4x.
    lone_step = [StepShape(1, 300)]
    perf = LoneDecodePerfModel(fit.hardware, model, fit.lone_decode)
    assert perf.step_time(lone_step) == pytest.approx(PerfModel(LONE, model).step_time(lone_step), rel=1e-3)
    assert PerfModel(fit.hardware, model).step_time(lone_step) > 3 * perf.step_time(lone_step)
    batch = [StepShape(1, 300)] * 2
    assert perf.step_time(batch) == pytest.approx(PerfModel(BATCHED, model).step_time(batch), rel=1e-3)


def test_a_profile_carries_the_lone_price_to_the_local_twin(tmp_path: Path, llama_dir: Path) -> None:
    profile = CalibratedProfile(BATCHED, "llama", 1, "float32", 0.05, 0.1, 80, engine={"model": str(llama_dir)},
                                lone_decode=LONE, fit_errors={"lone decode": [0.01, 0.02, 5.0]})
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(profile.to_json()))
    loaded = CalibratedProfile.from_json(json.loads(path.read_text()))
    assert loaded == profile
    perf, _ = local_twin(loaded.engine_config(), loaded.hardware, loaded.lone_decode)
    assert isinstance(perf, LoneDecodePerfModel)
    assert perf.step_time([StepShape(1, 50)]) == PerfModel(LONE, perf.model).step_time([StepShape(1, 50)])
    assert not AggregatePricer(perf).ok  # the incremental path's aggregate price does not split the paths
    plain, _ = local_twin(EngineConfig(model=str(llama_dir)), BATCHED)
    assert type(plain) is PerfModel


def test_step_report_sets_logged_steps_against_each_path(tmp_path: Path, llama_dir: Path) -> None:
    profile = CalibratedProfile(BATCHED, "llama", 1, "float32", 0.05, 0.1, 80, engine={"model": str(llama_dir)},
                                lone_decode=LONE)
    perf, _ = local_twin(profile.engine_config(), profile.hardware, profile.lone_decode)
    lone, pair = perf.step_time([StepShape(1, 20)]), perf.step_time([StepShape(1, 21)] * 2)
    lines = [{"start": 0.0, "s": lone, "shapes": [[1, 20, True, False]]},  # the next step continues it
             {"start": lone + 1e-4, "s": 2 * pair, "shapes": [[1, 21, True, False], [1, 21, True, False]]},
             {"start": 1.0, "s": 0.01, "shapes": [[16, 16, True, True]]}]  # a new request: no loop time
    (tmp_path / "steps-1.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = step_report(profile, tmp_path)
    assert report["lone decode"]["ratio_p50"] == pytest.approx(1.0)
    assert report["lone decode"]["gap_ms_p50"] == pytest.approx(0.1)
    assert report["decode"]["ratio_p50"] == pytest.approx(0.5)
    assert report["prefill"]["steps"] == 1 and np.isnan(report["prefill"]["gap_ms_p50"])


def test_decode_runs_keep_each_paths_price() -> None:
    """The fast path (runs of decode steps) takes a batch's slope from the batched path and a lone
    request's from the lone one: the same times as stepping one by one."""
    model = ModelProfile(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4, num_kv_heads=2, head_dim=16,
                         vocab_size=512, weight_bytes_per_param=4, kv_bytes_per_element=4)
    hw = HardwareProfile("test", 1e12, 1e11, step_overhead_s=1e-3, seq_overhead_s=1e-4, memory_efficiency=0.02)
    perf = LoneDecodePerfModel(hw, model, hw.calibrated(step_overhead_s=1e-4, memory_efficiency=0.9))
    rng = random.Random(0)
    requests, at = [], 0.0
    for _ in range(40):
        at += rng.expovariate(1 / 0.03)
        requests.append(SimRequest(at, [rng.randrange(2, 400) for _ in range(rng.randint(2, 30))], rng.randint(1, 60)))
    results = []
    for decode_runs in (False, True):
        config = SimEngineConfig(num_blocks=80, max_model_len=160, block_size=4, max_num_seqs=8,
                                 max_num_batched_tokens=40)
        instances = [SimInstance(f"i{i}", perf, config, b"x") for i in range(2)]
        sim = ClusterSimulator(instances, make_policy("round-robin"), decode_runs=decode_runs)
        results.append({r.index: (r.first_token_s, r.finish_s) for r in sim.run(list(requests)).records})
    assert results[0].keys() == results[1].keys()
    for index, (first, finish) in results[0].items():
        assert results[1][index][0] == pytest.approx(first, rel=1e-9)
        assert results[1][index][1] == pytest.approx(finish, rel=1e-9)


def test_the_profile_times_one_sequence_decodes_over_their_context(llama_dir: Path) -> None:
    from edgecloud.llm.engine_core import EngineCore
    from edgecloud.llm.model_source import resolve_model
    from edgecloud.sim.calibrate import profile_steps

    config = EngineConfig(model=str(llama_dir), num_threads=1, kv_cache_memory_mb=16)
    core = EngineCore(config, resolve_model(config.model))
    samples = profile_steps(core, repeats=1, budget_s=0.0)  # no batch sweep: the lone sweep stands alone
    contexts = sorted(s.shapes[0].context_len for s in samples if step_class(s.shapes) == "lone decode")
    assert len(contexts) >= 30 and contexts[0] < 16 and contexts[-1] > min(500, core.max_model_len // 2)
    fit = fit_two_paths(HardwareProfile("cpu", 50e9, 10e9), local_model_profile(core), samples)
    assert fit.lone_decode is not None and np.isfinite(fit.errors).all()


def test_the_served_probe_scales_each_path_by_its_measured_mean() -> None:
    from edgecloud.sim.calibrate import served_factors, slowed

    model = small_model()
    perf = LoneDecodePerfModel(BATCHED, model, LONE)
    lone = [StepShape(1, 30)]
    batch, later = [StepShape(1, 32), StepShape(1, 33)], [StepShape(1, 50), StepShape(1, 51)]
    t_lone, t_batch, t_later = perf.step_time(lone), perf.step_time(batch), perf.step_time(later)
    # one core: lone steps taking 1x and 2x their price (mean 1.5x), then batches at 1.2x; 0.3 ms between
    # steps that continue each other's requests, none before the last (new requests after idling)
    steps = [{"start": 0.0, "s": t_lone, "shapes": [[1, 30, True, False]]},
             {"start": t_lone + 3e-4, "s": 2 * t_lone, "shapes": [[1, 31, True, False]]},
             {"start": 3 * t_lone + 6e-4, "s": 1.2 * t_batch, "shapes": [[1, 32, True, False], [1, 33, True, False]]},
             {"start": 10.0, "s": 1.2 * t_later, "shapes": [[1, 50, True, False], [1, 51, True, False]]}]
    served = served_factors([steps], perf)
    assert served.lone_factor == pytest.approx(1.5, rel=1e-3) and served.batched_factor == pytest.approx(1.2)
    assert served.loop_s == pytest.approx(3e-4) and served.num_steps == 4
    lone_spread = served.noise["lone decode"]
    assert len(lone_spread) == 100 and lone_spread[0] == pytest.approx(1 / 1.5, rel=0.01)
    assert lone_spread[-1] == pytest.approx(2 / 1.5, rel=0.01) and np.mean(lone_spread) == pytest.approx(1, rel=1e-3)
    assert served.noise["batched"] == pytest.approx([1.0] * 100)
    hw = slowed(BATCHED, 1.2, 3e-4)
    assert PerfModel(hw, model).step_time(batch) == pytest.approx(1.2 * t_batch + 3e-4)


def test_the_engine_logs_each_step_when_asked(tmp_path: Path, llama_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from edgecloud.llm.engine_core import EngineCore
    from edgecloud.llm.model_source import resolve_model
    from edgecloud.llm.request import EngineCoreRequest
    from edgecloud.llm.sampling_params import SamplingParams
    from edgecloud.sim.validate import read_step_log

    monkeypatch.setenv("EDGECLOUD_STEP_LOG", str(tmp_path))
    config = EngineConfig(model=str(llama_dir), num_threads=1, kv_cache_memory_mb=16)
    core = EngineCore(config, resolve_model(config.model))
    params = SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True)
    core.add_request(EngineCoreRequest(request_id="a", prompt_token_ids=list(range(2, 22)),
                                       arrival_time=time.monotonic(), params=params))
    while core.has_unfinished():
        core.step()
    core.close()
    (steps,) = read_step_log(tmp_path)
    assert [s["shapes"] for s in steps] == [[[20, 20, True, True]], [[1, 21, True, False]], [[1, 22, True, False]]]
    assert all(s["s"] > 0 for s in steps) and steps[0]["start"] < steps[1]["start"] < steps[2]["start"]


def test_drawn_step_times_keep_the_mean_and_the_seed() -> None:
    model = small_model()
    noise = {"lone decode": [0.5, 1.5], "batched": [1.0]}
    lone, batch = [StepShape(1, 30)], [StepShape(1, 30)] * 2
    exact = PerfModel(LONE, model).step_time(lone)
    draws = [LoneDecodePerfModel(BATCHED, model, LONE, noise=noise, seed=3) for _ in range(2)]
    times = [[perf.step_time(lone) for _ in range(400)] for perf in draws]
    assert times[0] == times[1]  # seeded: the same draws
    assert set(np.round(np.array(times[0]) / exact, 9)) == {0.5, 1.5}
    assert np.mean(times[0]) == pytest.approx(exact, rel=0.1)
    assert draws[0].step_time(batch) == pytest.approx(PerfModel(BATCHED, model).step_time(batch))
    from edgecloud.sim.decode_run import DecodeRun

    assert DecodeRun.plan(None, None, draws[0], 0.0, 1.0) is None  # type: ignore[arg-type]


def test_step_logging_puts_back_what_was_set_before(monkeypatch, tmp_path) -> None:
    from edgecloud.sim.validate import step_logging

    monkeypatch.setenv("EDGECLOUD_STEP_LOG", "/the/users/own")
    with step_logging(tmp_path):
        assert os.environ["EDGECLOUD_STEP_LOG"] == str(tmp_path)
    assert os.environ["EDGECLOUD_STEP_LOG"] == "/the/users/own"
    monkeypatch.delenv("EDGECLOUD_STEP_LOG")
    with step_logging(tmp_path):
        pass
    assert "EDGECLOUD_STEP_LOG" not in os.environ
    with step_logging(None):
        assert "EDGECLOUD_STEP_LOG" not in os.environ
