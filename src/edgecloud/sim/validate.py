"""``edgecloud sim validate``: is the simulator right about this machine?

The same slice of a trace (default: the Azure conversation trace, lengths scaled for the small
local model) is replayed on a real cluster of CPU instances (``edgecloud cluster serve``, measured
by the serving benchmark's client) and in the simulator calibrated for this machine (``sim
calibrate``), for each routing policy. For TTFT, TPOT and end-to-end latency at p50 and p90 the
relative error of the simulation is reported: ``{"cases": [{"policy", "metric", "quantile",
"real_ms", "sim_ms", "error"}]}``; the goal is |error| <= 10% everywhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgecloud.bench.arrivals import trace_arrivals
from edgecloud.bench.machine import LoadWatch
from edgecloud.bench.traces import read_trace
from edgecloud.bench.workload import LengthScaling, PromptVocab, trace_workload
from edgecloud.cluster.config import instances_from_flags
from edgecloud.llm.model_source import resolve_model
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


def validate(profile: CalibratedProfile, settings: ValidationSettings) -> dict[str, Any]:
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
    for policy in settings.policies:
        real = run_real(config, specs, policy, requests, arrivals)
        sim = run_twin(config, specs, policy, requests, arrivals, profile)
        runs += [summary_row(real), summary_row(sim)]
        cases += compare(policy, real, sim)
    machine = watch.finish()
    return {
        "cases": cases,
        "runs": runs,
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
