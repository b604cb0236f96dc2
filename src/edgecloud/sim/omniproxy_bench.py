"""``edgecloud bench omniproxy``: OmniProxy (``edgecloud.cluster.omniproxy``, issue #21) against the
router's other policies on prefill + decode instances, on one trace (Mooncake's conversation trace
by default: real shared prefixes), simulated at cluster scale and real on this machine.

Every policy runs on the same layout and the same requests, so rows compare side by side:

- ``round-robin`` and ``least-outstanding``: ``pd`` with that policy on both sides;
- ``prefix-aware``: ``pd``'s defaults, the cluster issue's cache-aware P/D (prefix-aware prefill,
  least-outstanding decode);
- ``omniproxy``: ``omni-prefill`` + ``omni-decode``; ``omniproxy-nohold``: the same without holding
  requests at the proxy (an ablation);
- ``pd:PREFILL:DECODE``: any other pair of the registry.

A simulated cluster is ``HARDWARE:MODEL:DEVICES:PREFILL:DECODE:RATE`` (instances of ``DEVICES``
accelerators each, the trace's arrival rate × ``RATE``, prompts cut to the model's context); the
real one is ``edgecloud cluster serve`` with CPU instances of the local model, over HTTP, lengths
scaled down. Rows carry TTFT/TPOT/e2e percentiles and the prefix-cache hit rate; each policy's
TTFT p99 and TPOT p99 against round-robin's and prefix-aware's come with a 95% bootstrap interval
(the same requests resampled for both). Every simulated row says so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgecloud.bench.arrivals import trace_arrivals
from edgecloud.bench.machine import LoadWatch
from edgecloud.bench.metrics import RequestRecord
from edgecloud.bench.report import cdf_steps, robust_xlim
from edgecloud.bench.traces import read_trace
from edgecloud.bench.workload import LengthScaling, PromptVocab, trace_workload
from edgecloud.cluster.config import instances_from_flags
from edgecloud.cluster.policies import make_policy
from edgecloud.llm.config import EngineConfig, ModelConfig
from edgecloud.llm.engine_core import max_model_len_for
from edgecloud.llm.model_source import resolve_model
from edgecloud.sim.bench import fit_context
from edgecloud.sim.compare import RunResult, json_finite, run_real, sim_run_result, summary_row
from edgecloud.sim.run import SimClusterSpec, build_instances, trace_workload_for
from edgecloud.sim.simulator import ClusterSimulator

BASELINES = ("round-robin", "prefix-aware")


@dataclass(frozen=True)
class PolicyCase:
    """A policy of the registry with its options, under the label the results use."""

    label: str
    policy: str
    options: dict[str, Any] = field(default_factory=dict)


NAMED_CASES = {
    "round-robin": PolicyCase("round-robin", "pd", {"prefill": "round-robin", "decode": "round-robin"}),
    "least-outstanding": PolicyCase("least-outstanding", "pd",
                                    {"prefill": "least-outstanding", "decode": "least-outstanding"}),
    "prefix-aware": PolicyCase("prefix-aware", "pd", {}),
    "omniproxy": PolicyCase("omniproxy", "omniproxy", {}),
    "omniproxy-nohold": PolicyCase("omniproxy-nohold", "omniproxy", {"hold": 0}),
}


def policy_case(text: str) -> PolicyCase:
    """A name of ``NAMED_CASES`` or ``pd:PREFILL:DECODE``; raises ``ValueError`` naming the choices."""
    text = text.strip()
    if text in NAMED_CASES:
        return NAMED_CASES[text]
    parts = text.split(":")
    if len(parts) == 3 and parts[0] == "pd":
        case = PolicyCase(text, "pd", {"prefill": parts[1], "decode": parts[2]})
        make_policy(case.policy, **case.options)  # unknown names fail here, not after a real run
        return case
    raise ValueError(f"policy {text!r}: expected one of {', '.join(NAMED_CASES)} or pd:PREFILL:DECODE")


@dataclass(frozen=True)
class SimCluster:
    """``prefill`` + ``decode`` instances of ``model`` on ``devices`` x ``hardware`` each, the
    trace's arrival rate x ``rate_scale``."""

    hardware: str
    model: str
    devices: int
    prefill: int
    decode: int
    rate_scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> SimCluster:
        parts = text.strip().split(":")
        try:
            hardware, model = parts[0], parts[1]
            devices, prefill, decode = int(parts[2]), int(parts[3]), int(parts[4])
            rate = float(parts[5]) if len(parts) > 5 else 1.0
        except (IndexError, ValueError):
            raise ValueError(f"expected HARDWARE:MODEL:DEVICES:PREFILL:DECODE[:RATE], got {text!r}") from None
        if len(parts) > 6 or min(devices, prefill, decode) < 1 or not rate > 0:
            raise ValueError(f"{text!r}: DEVICES, PREFILL and DECODE must be >= 1 and RATE > 0")
        return cls(hardware, model, devices, prefill, decode, rate)

    @property
    def spec(self) -> SimClusterSpec:
        return SimClusterSpec(self.model, self.hardware, 0, self.prefill, self.decode, self.devices)

    @property
    def label(self) -> str:
        return (f"{self.prefill}P+{self.decode}D x {self.devices} {self.hardware} ({self.model}), "
                f"rate x{self.rate_scale:g}")


@dataclass(frozen=True)
class RealCluster:
    """The CPU cluster: ``prefill`` + ``decode`` instances of ``engine``, lengths scaled."""

    engine: EngineConfig
    prefill: int = 2
    decode: int = 1
    num_requests: int = 200
    scaling: LengthScaling = field(default_factory=lambda: LengthScaling(1 / 32, 1 / 16))
    time_scale: float = 1.0
    seed: int = 0


@dataclass
class OmniProxyBenchSettings:
    trace: str
    cases: Sequence[PolicyCase]
    sims: Sequence[SimCluster] = ()
    sim_num_requests: int | None = 1000
    real: RealCluster | None = None
    seed: int = 0


def simulate_case(cluster: SimCluster, case: PolicyCase, workload: Sequence[Any]) -> tuple[RunResult, dict[str, Any]]:
    instances, link, _ = build_instances(cluster.spec)
    policy = make_policy(case.policy, **case.options)
    result = ClusterSimulator(instances, policy, transfer=link, record_token_times=False).run(workload)
    run = sim_run_result(case.label, result)
    prefill = [i for i in result.instances if i.role == "prefill"]
    queries = sum(i.kv.prefix_queries for i in prefill)
    extra: dict[str, Any] = {"accelerators": cluster.spec.accelerators, "cpu_s": round(result.cpu_s, 2),
                             "simulated_s": round(result.simulated_s, 2),
                             "prefill_hit_rate": sum(i.kv.prefix_hits for i in prefill) / queries if queries else 0.0}
    proxy = getattr(policy, "prefill_policy", None)
    if hasattr(proxy, "held"):
        extra["held_at_proxy"] = proxy.held  # type: ignore[union-attr]
    return run, extra


def prefill_hit_rate(run: RunResult) -> float:
    """Prompt tokens the prefill instances found in their prefix caches, of those they looked up
    (where routing shows; decode instances count handed-over blocks as hits)."""
    cache = [v for labels, v in run.extra.get("prefix_cache", {}).items() if 'role="prefill"' in labels]
    queries = sum(q for _, q in cache)
    return sum(h for h, _ in cache) / queries if queries else 0.0


def _values(records: Sequence[RequestRecord], metric: str) -> np.ndarray:
    """Per request index, the metric in ms (NaN where the request has none)."""
    out = np.full(max((r.index for r in records), default=-1) + 1, np.nan)
    for r in records:
        value = getattr(r, metric) if r.ok else None
        if value is not None:
            out[r.index] = value * 1000
    return out


def ratio_interval(system: RunResult, baseline: RunResult, metric: str, q: float = 99.0, draws: int = 1000,
                   seed: int = 0) -> dict[str, float | None]:
    """``system``'s ``q``-th percentile of ``metric`` over ``baseline``'s on the same requests, with
    a 95% percentile-bootstrap interval (requests resampled together for both)."""
    a, b = _values(system.records, metric), _values(baseline.records, metric)
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 2:
        return {"ratio": None, "low": None, "high": None, "n": len(a)}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (draws, len(a)))
    ratios = np.percentile(a[idx], q, axis=1) / np.percentile(b[idx], q, axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return {"ratio": float(np.percentile(a, q) / np.percentile(b, q)), "low": float(low), "high": float(high),
            "n": len(a)}


def _compare(runs: dict[str, RunResult], cluster: str) -> list[dict[str, Any]]:
    out = []
    for base in BASELINES:
        if base not in runs:
            continue
        for label, run in runs.items():
            if label == base:
                continue
            out.append({"cluster": cluster, "policy": label, "against": base,
                        "ttft_p99": ratio_interval(run, runs[base], "ttft"),
                        "ttft_p50": ratio_interval(run, runs[base], "ttft", q=50.0),
                        "tpot_p99": ratio_interval(run, runs[base], "tpot")})
    return out


def bench_omniproxy(settings: OmniProxyBenchSettings, progress: Any = print) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []
    runs: dict[str, dict[str, RunResult]] = {}
    watch = LoadWatch.begin(self_contained=False)
    for cluster in settings.sims:
        _, _, max_len = build_instances(replace(cluster.spec, prefill=1, decode=1))
        workload = trace_workload_for(settings.trace, max_len, num_requests=settings.sim_num_requests,
                                      rate_scale=cluster.rate_scale, seed=settings.seed)
        label = f"{cluster.label}, SIMULATED"
        by_policy = runs.setdefault(label, {})
        for case in settings.cases:
            run, extra = simulate_case(cluster, case, workload)
            by_policy[case.label] = run
            rows.append(summary_row(run, cluster=label, simulated=True, requests=len(workload), **extra))
            progress(_line(rows[-1]))
        comparisons += _compare(by_policy, label)
    if settings.real is not None:
        real = settings.real
        source = resolve_model(real.engine.model)
        context = max_model_len_for(real.engine, ModelConfig.from_file(source.directory / "config.json"))
        scaling = fit_context(real.scaling, context)
        trace = read_trace(settings.trace, limit=real.num_requests)
        requests = trace_workload(PromptVocab.from_dir(source.directory), trace, scaling, None, seed=real.seed)
        arrivals = trace_arrivals([r.arrival_s for r in trace], real.time_scale)
        specs = instances_from_flags(real.engine, 0, real.prefill, real.decode)
        label = f"{real.prefill}P+{real.decode}D CPU instances ({real.engine.model or 'default model'}), real"
        by_policy = runs.setdefault(label, {})
        for case in settings.cases:
            run = run_real(real.engine, specs, case.policy, requests, arrivals, case.options)
            run.policy = case.label
            by_policy[case.label] = run
            rows.append(summary_row(run, cluster=label, simulated=False, requests=len(requests),
                                    prefill_hit_rate=prefill_hit_rate(run)))
            progress(_line(rows[-1]))
        comparisons += _compare(by_policy, label)
    machine = watch.finish()
    return {
        "cases": rows,
        "comparisons": comparisons,
        "runs": runs,
        "settings": {
            "trace": settings.trace, "policies": [c.__dict__ for c in settings.cases],
            "sim_clusters": [c.__dict__ for c in settings.sims], "sim_num_requests": settings.sim_num_requests,
            "real": None if settings.real is None else {
                "prefill": settings.real.prefill, "decode": settings.real.decode,
                "num_requests": settings.real.num_requests, "scaling": settings.real.scaling.__dict__,
                "time_scale": settings.real.time_scale, "engine": dict(settings.real.engine.__dict__)},
        },
        "machine": machine.as_dict(),
    }


def _line(row: dict[str, Any]) -> str:
    tag = "SIMULATED" if row["simulated"] else "real"
    return (f"{tag:>9} {row['policy']:>18} on {row['cluster']}: TTFT p50/p99 {row['ttft_ms_p50'] or 0:9.1f} / "
            f"{row['ttft_ms_p99'] or 0:9.1f} ms, TPOT p99 {row['tpot_ms_p99'] or 0:7.1f} ms, prefill hit rate "
            f"{row['prefill_hit_rate']:.1%}, {row['completed']} done, {row['failed']} failed")


def write_json(path: str | Path, result: dict[str, Any]) -> None:
    document = {k: v for k, v in result.items() if k != "runs"}
    Path(path).write_text(json.dumps(json_finite(document), indent=2, default=str) + "\n")


def plot(path: str | Path, result: dict[str, Any]) -> None:
    """Per cluster: the TTFT CDF of every policy, and its TTFT p99 and TPOT p99 against round-robin's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: dict[str, dict[str, RunResult]] = result["runs"]
    figure, axes = plt.subplots(len(runs), 2, figsize=(13, 3.8 * len(runs)), squeeze=False)
    for row, (cluster, by_policy) in enumerate(runs.items()):
        cdf, bars = axes[row]
        pooled: list[float] = []
        for label, run in by_policy.items():
            values = [r.ttft * 1000 for r in run.records if r.ok and r.ttft is not None]
            if values:
                cdf_steps(cdf, values, label=f"{label} (p99 {run.latency_ms('ttft', 'p99'):.0f} ms)")
                pooled += values
        if pooled:
            robust_xlim(cdf, pooled)
            cdf.legend(loc="lower right", fontsize=8)
        cdf.set_xlabel("TTFT (ms)")
        cdf.set_ylabel("fraction of requests")
        cdf.set_title(cluster, fontsize=9)
        cdf.grid(alpha=0.3)
        ratios = [c for c in result["comparisons"] if c["cluster"] == cluster and c["against"] == "round-robin"]
        for i, metric in enumerate(("ttft_p99", "tpot_p99")):
            xs = np.arange(len(ratios)) + (i - 0.5) * 0.35
            values = [c[metric]["ratio"] or np.nan for c in ratios]
            errors = [[max(0.0, (c[metric]["ratio"] or 0) - (c[metric]["low"] or 0)) for c in ratios],
                      [max(0.0, (c[metric]["high"] or 0) - (c[metric]["ratio"] or 0)) for c in ratios]]
            bars.bar(xs, values, 0.35, yerr=errors, capsize=3, label=metric.replace("_", " ").upper())
        bars.axhline(1.0, color="black", linewidth=0.8)
        bars.set_xticks(np.arange(len(ratios)), [c["policy"] for c in ratios], fontsize=8)
        bars.set_ylabel("÷ round-robin's (95% bootstrap)")
        bars.legend(fontsize=8)
        bars.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
