"""``edgecloud bench cluster``: routing policies (and P/D) on one trace, real and simulated, side by
side.

Per case (a policy on mixed instances, or P/D on prefill + decode instances), three runs of the
same trace: ``real`` (a CPU cluster of the local model, ``edgecloud cluster serve``, over HTTP),
``twin`` (the simulator calibrated for this machine, same prompts and arrivals; needs
``--hardware``), and ``sim`` (a simulated accelerator cluster, e.g. 16 H100 with Llama-3-8B, on
the trace at its own lengths; needs ``--sim-hardware``). Each reports TTFT/TPOT/e2e percentiles,
throughput and the prefix-cache hit rate; P/D cases their hand-over time. JSON
(``{"cases": [...]}``) and a plot (TTFT and TPOT CDFs per run); every simulated row is marked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgecloud.bench.arrivals import trace_arrivals
from edgecloud.bench.machine import LoadWatch
from edgecloud.bench.report import cdf_steps, robust_xlim
from edgecloud.bench.traces import read_trace
from edgecloud.bench.workload import LengthScaling, PromptVocab, trace_workload
from edgecloud.cluster.config import InstanceSpec, instances_from_flags
from edgecloud.llm.config import EngineConfig, ModelConfig
from edgecloud.llm.engine_core import max_model_len_for
from edgecloud.llm.model_source import resolve_model
from edgecloud.sim.compare import RunResult, json_finite, run_real, run_twin, sim_run_result, summary_row
from edgecloud.sim.profiles import CalibratedProfile
from edgecloud.sim.run import SimClusterSpec, build_instances, simulate, trace_workload_for


@dataclass
class Case:
    """One cluster layout and policy: ``mixed`` instances, or ``prefill`` + ``decode`` ones."""

    policy: str
    mixed: int = 0
    prefill: int = 0
    decode: int = 0

    @property
    def label(self) -> str:
        if self.prefill or self.decode:
            return f"{self.policy} ({self.prefill}P+{self.decode}D)"
        return f"{self.policy} ({self.mixed} mixed)"


@dataclass
class ScaleSettings:
    """The simulated accelerator cluster: ``instances`` of ``model`` on ``devices`` x ``hardware``."""

    hardware: str
    model: str = "llama-3-8b"
    instances: int = 16
    devices: int = 1
    rate_scale: float = 1.0
    num_requests: int | None = None
    input_scale: float = 1.0
    output_scale: float = 1.0


@dataclass
class ClusterBenchSettings:
    trace: str
    cases: Sequence[Case]
    engine: EngineConfig
    num_requests: int = 200
    scaling: LengthScaling = field(default_factory=LengthScaling)
    time_scale: float = 1.0
    hash_block_tokens: int | None = None
    seed: int = 0
    real: bool = True
    twin: CalibratedProfile | None = None
    scale: ScaleSettings | None = None


def _specs(engine: EngineConfig, case: Case) -> list[InstanceSpec]:
    return instances_from_flags(engine, case.mixed, case.prefill, case.decode)


def _scale_spec(scale: ScaleSettings, case: Case) -> SimClusterSpec:
    """The accelerator cluster with the case's shape: its instance count split as the case's."""
    total = case.mixed + case.prefill + case.decode
    if case.prefill or case.decode:
        prefill = max(1, round(scale.instances * case.prefill / total))
        return SimClusterSpec(scale.model, scale.hardware, 0, prefill, scale.instances - prefill, scale.devices)
    return SimClusterSpec(scale.model, scale.hardware, scale.instances, devices=scale.devices)


def fit_context(scaling: LengthScaling, max_model_len: int) -> LengthScaling:
    """``scaling`` with caps that keep every request inside the model's context: the caps given,
    else outputs up to a quarter of the context and prompts up to the rest (a request that does
    not fit would only be refused by the engine)."""
    output = scaling.max_output_len or max(1, max_model_len // 4)
    if output >= max_model_len:
        raise ValueError(f"max_output_len must be < the model's context ({max_model_len}), got {output}")
    prompt = min(scaling.max_input_len or max_model_len, max_model_len - output)
    return replace(scaling, max_input_len=prompt, max_output_len=output)


def bench_cluster(settings: ClusterBenchSettings) -> dict[str, Any]:
    source = resolve_model(settings.engine.model)
    vocab = PromptVocab.from_dir(source.directory)
    context = max_model_len_for(settings.engine, ModelConfig.from_file(source.directory / "config.json"))
    settings = replace(settings, scaling=fit_context(settings.scaling, context))
    trace = read_trace(settings.trace, limit=settings.num_requests)
    requests = trace_workload(vocab, trace, settings.scaling, settings.hash_block_tokens, seed=settings.seed)
    arrivals = trace_arrivals([r.arrival_s for r in trace], settings.time_scale)
    rows: list[dict[str, Any]] = []
    runs: dict[str, RunResult] = {}
    watch = LoadWatch.begin(self_contained=False)
    scale_workload = None
    if settings.scale is not None:
        s = settings.scale
        _, _, max_len = build_instances(SimClusterSpec(s.model, s.hardware, 1, devices=s.devices))
        scale_workload = trace_workload_for(
            settings.trace, max_len, num_requests=s.num_requests, rate_scale=s.rate_scale,
            scaling=LengthScaling(s.input_scale, s.output_scale), seed=settings.seed)
    for case in settings.cases:
        specs = _specs(settings.engine, case)
        cluster = f"{len(specs)} CPU instances ({settings.engine.model or 'default model'})"
        if settings.real:
            run = run_real(settings.engine, specs, case.policy, requests, arrivals)
            runs[f"real: {case.label}"] = run
            rows.append(summary_row(run, case=case.label, cluster=cluster, simulated=False))
        if settings.twin is not None:
            run = run_twin(settings.engine, specs, case.policy, requests, arrivals, settings.twin)
            run.mode = "twin"
            runs[f"twin (simulated): {case.label}"] = run
            rows.append(summary_row(run, case=case.label, cluster=f"{cluster}, simulated", simulated=True))
        if settings.scale is not None and scale_workload is not None:
            spec = _scale_spec(settings.scale, case)
            result = simulate(spec, case.policy, scale_workload)
            run = sim_run_result(case.policy, result)
            runs[f"sim: {case.label}"] = run
            rows.append(summary_row(run, case=case.label, cluster=f"{spec.describe()}, simulated", simulated=True,
                                    accelerators=spec.accelerators, wall_s=result.wall_s, cpu_s=result.cpu_s,
                                    simulated_s=result.simulated_s))
    machine = watch.finish()
    return {
        "cases": rows,
        "runs": runs,
        "settings": {
            "trace": settings.trace, "num_requests": settings.num_requests, "time_scale": settings.time_scale,
            "scaling": settings.scaling.__dict__, "hash_block_tokens": settings.hash_block_tokens,
            "engine": {k: v for k, v in settings.engine.__dict__.items()},
            "scale": None if settings.scale is None else settings.scale.__dict__,
        },
        "machine": machine.as_dict(),
    }


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    document = {k: v for k, v in result.items() if k != "runs"}
    Path(path).write_text(json.dumps(json_finite(document), indent=2) + "\n")


def plot(path: str | Path, result: dict[str, Any], title: str = "") -> None:
    """TTFT and TPOT CDFs, one panel pair per mode (real, twin, sim), one line per case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, RunResult] = result["runs"]
    modes = [m for m in ("real", "twin", "sim") if any(r.mode == m for r in runs.values())]
    figure, axes = plt.subplots(len(modes), 2, figsize=(13, 3.8 * len(modes)), squeeze=False)
    names = {"real": "real CPU cluster", "twin": "simulated twin of the CPU cluster (SIMULATED)",
             "sim": "simulated accelerator cluster (SIMULATED)"}
    for row, mode in enumerate(modes):
        for col, metric in enumerate(("ttft", "tpot")):
            axis = axes[row][col]
            pooled: list[float] = []
            for label, run in runs.items():
                if run.mode != mode:
                    continue
                values = [getattr(r, metric) * 1000 for r in run.records if r.ok and getattr(r, metric) is not None]
                if values:
                    p50 = getattr(run.summary, metric).p50 * 1000
                    cdf_steps(axis, values, label=f"{label.split(': ', 1)[1]} (p50 {p50:.1f}, hit "
                                                 f"{run.hit_rate:.0%})")
                    pooled += values
            if pooled:
                robust_xlim(axis, pooled)
                axis.legend(loc="lower right", fontsize=8)
            axis.set_xlabel(f"{metric.upper()} (ms)")
            axis.set_ylabel("fraction of requests")
            axis.set_title(f"{names[mode]}: {metric.upper()}", fontsize=10)
            axis.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
