"""``edgecloud sim validate``: is the simulator right about this machine?

The same slice of a trace (default: the Azure conversation trace, lengths scaled for the small
local model) is replayed on a real cluster of CPU instances (``edgecloud cluster serve``, measured
by the serving benchmark's client) and in the simulator calibrated for this machine (``sim
calibrate``), for each routing policy. For TTFT, TPOT and end-to-end latency at p50 and p90 the
relative error of the simulation is reported: ``{"cases": [{"policy", "metric", "quantile",
"real_ms", "sim_ms", "error"}]}``; the goal is |error| <= 10% everywhere.

With ``step_log`` (``--step-log DIR``) the real instances' engine cores log every step
(``EDGECLOUD_STEP_LOG``: its shapes and seconds), and the measured steps are set against the
calibrated cost model per step class (``step_report``): where the simulator's step prices are off.
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecloud.bench.arrivals import trace_arrivals
from edgecloud.bench.machine import LoadWatch
from edgecloud.bench.traces import read_trace
from edgecloud.bench.workload import LengthScaling, PromptVocab, trace_workload
from edgecloud.cluster.config import instances_from_flags
from edgecloud.llm.model_source import resolve_model
from edgecloud.llm.perf_model import StepShape
from edgecloud.sim.compare import RunResult, json_finite, run_real, run_twin, summary_row
from edgecloud.sim.profiles import CalibratedProfile

METRICS = ("ttft", "tpot", "e2e")
QUANTILES = ("p50", "p90")
TOLERANCE = 0.10


@dataclass
class ValidationSettings:
    trace: str
    num_requests: int = 300
    input_scale: float = 0.1
    output_scale: float = 0.1
    max_input_len: int | None = 400
    max_output_len: int | None = 100
    time_scale: float = 0.5
    instances: int = 2
    policies: Sequence[str] = ("round-robin", "prefix-aware")
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def validate(profile: CalibratedProfile, settings: ValidationSettings, step_log: str | Path | None = None) \
        -> dict[str, Any]:
    config = profile.engine_config()
    vocab = PromptVocab.from_dir(resolve_model(config.model).directory)
    trace = read_trace(settings.trace, limit=settings.num_requests)
    scaling = LengthScaling(settings.input_scale, settings.output_scale, settings.max_input_len,
                            settings.max_output_len)
    requests = trace_workload(vocab, trace, scaling, seed=settings.seed)
    arrivals = trace_arrivals([r.arrival_s for r in trace], settings.time_scale)
    specs = instances_from_flags(config, settings.instances)
    cases: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    watch = LoadWatch.begin(self_contained=False)
    steps: dict[str, Any] = {}
    for policy in settings.policies:
        directory = None if step_log is None else Path(step_log) / policy
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
        with step_logging(directory):
            real = run_real(config, specs, policy, requests, arrivals)
        if step_log is not None:
            steps[policy] = step_report(profile, Path(step_log) / policy)
        sim = run_twin(config, specs, policy, requests, arrivals, profile)
        runs += [summary_row(real), summary_row(sim)]
        cases += compare(policy, real, sim)
    machine = watch.finish()
    return {
        "cases": cases,
        "runs": runs,
        **({"steps": steps} if step_log is not None else {}),
        "passed": all(abs(c["error"]) <= TOLERANCE for c in cases if c["error"] is not None),
        "settings": {**settings.__dict__, "policies": list(settings.policies), "engine": profile.engine},
        "calibration": profile.to_json(),
        "machine": machine.as_dict(),
    }


def compare(policy: str, real: RunResult, sim: RunResult) -> list[dict[str, Any]]:
    cases = []
    for metric in METRICS:
        for quantile in QUANTILES:
            real_ms, sim_ms = real.latency_ms(metric, quantile), sim.latency_ms(metric, quantile)
            error = (sim_ms - real_ms) / real_ms if real_ms and math.isfinite(real_ms) and math.isfinite(sim_ms) \
                else None
            cases.append({"policy": policy, "metric": metric, "quantile": quantile, "real_ms": real_ms,
                          "sim_ms": sim_ms, "error": error})
    return cases


def write(path: str | Path, result: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(json_finite(result), indent=2) + "\n")


@contextlib.contextmanager
def step_logging(directory: str | Path | None) -> Iterator[None]:
    """Engine cores started inside log their steps under ``directory`` (``EDGECLOUD_STEP_LOG``, read
    when a core starts); the variable's earlier value is put back after. None: nothing changes."""
    if directory is None:
        yield
        return
    saved = os.environ.get("EDGECLOUD_STEP_LOG")
    os.environ["EDGECLOUD_STEP_LOG"] = str(directory)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("EDGECLOUD_STEP_LOG", None)
        else:
            os.environ["EDGECLOUD_STEP_LOG"] = saved


def logged_shapes(step: dict[str, Any]) -> list[StepShape]:
    """A logged step's shapes (``[new tokens, context after, sampled, prefilling]`` each)."""
    return [StepShape(new, context, sampled) for new, context, sampled, _ in step["shapes"]]


def read_step_log(directory: str | Path) -> list[list[dict[str, Any]]]:
    """Each engine core's logged steps (``EDGECLOUD_STEP_LOG``), one list per core in step order."""
    cores = []
    for path in sorted(glob.glob(str(Path(directory) / "steps-*.jsonl"))):
        with open(path) as file:
            cores.append([json.loads(line) for line in file if line.strip()])
    return cores


def step_report(profile: CalibratedProfile, directory: str | Path) -> dict[str, dict[str, float]]:
    """Measured steps of the real run against the calibrated cost model, per step class
    (``calibrate.step_class``): steps, measured and modelled p50 (ms), the ratio modelled / measured
    at p10, p50 and p90, and the core's time from a step to the next one continuing its work (its
    loop; p50 and mean)."""
    import numpy as np

    from edgecloud.sim.calibrate import continuing_gaps, step_class
    from edgecloud.sim.profiles import local_twin

    perf, _ = local_twin(profile.engine_config(), profile.hardware, profile.lone_decode)
    measured: dict[str, list[tuple[float, float]]] = {}
    gaps: dict[str, list[float]] = {}
    for steps in read_step_log(directory):
        names = []
        for step in steps:
            shapes = logged_shapes(step)
            names.append(step_class(shapes))
            measured.setdefault(names[-1], []).append((step["s"], perf.step_time(shapes)))
        for i, gap in continuing_gaps(steps):  # the next step continued this one's work: the loop's time
            gaps.setdefault(names[i], []).append(gap)
    report = {}
    for name, pairs in sorted(measured.items()):
        real, model = np.array(pairs).T
        ratio = model / real
        report[name] = {"steps": len(pairs), "real_ms_p50": float(np.median(real) * 1e3),
                        "model_ms_p50": float(np.median(model) * 1e3), "ratio_p10": float(np.percentile(ratio, 10)),
                        "ratio_p50": float(np.median(ratio)), "ratio_p90": float(np.percentile(ratio, 90)),
                        "real_ms_mean": float(np.mean(real) * 1e3), "model_ms_mean": float(np.mean(model) * 1e3),
                        "gap_ms_p50": float(np.median(gaps[name]) * 1e3) if gaps.get(name) else math.nan,
                        "gap_ms_mean": float(np.mean(gaps[name]) * 1e3) if gaps.get(name) else math.nan}
    return report
