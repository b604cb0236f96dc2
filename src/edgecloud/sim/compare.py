"""Real and simulated runs of one workload, summarised alike.

``run_real`` starts ``edgecloud cluster serve`` with the given instances and policy and replays
the workload over HTTP (``edgecloud.bench``); ``run_twin`` simulates the same cluster (each
instance a ``SimInstance`` with the local model's shapes, the engine's KV budget and batch
limits, and a calibrated cost model) on the same prompts and arrival times. Both end as the
serving benchmark's ``RequestRecord``s, summarised by the same code (``bench.metrics``), plus the
prefix-cache hit rate over all instances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edgecloud.bench.metrics import BenchSummary, RequestRecord, summarize
from edgecloud.bench.workload import BenchRequest
from edgecloud.cluster.config import InstanceSpec
from edgecloud.cluster.policies import make_policy
from edgecloud.llm.config import EngineConfig
from edgecloud.sim.instance import SimInstance
from edgecloud.sim.profiles import CalibratedProfile, local_twin
from edgecloud.sim.real import RealCluster, engine_args, metric_values, replay
from edgecloud.sim.simulator import ClusterSimulator, SimRecord, SimResult, TransferModel
from edgecloud.sim.workload import bench_requests


@dataclass
class RunResult:
    """One run (real or simulated) of one policy."""

    mode: str  # real | sim
    policy: str
    records: list[RequestRecord]
    summary: BenchSummary
    hit_rate: float
    handover_s: list[float]  # P/D: each hand-over's KV transfer
    extra: dict[str, Any]

    def latency_ms(self, metric: str, quantile: str) -> float:
        return getattr(getattr(self.summary, metric), quantile) * 1000


def to_request_records(records: Sequence[SimRecord]) -> list[RequestRecord]:
    """Simulated requests as the serving benchmark's records (client-side times)."""
    out = []
    for r in records:
        record = RequestRecord(index=r.index, send_time=r.arrival_s, end_time=r.finish_s or r.arrival_s,
                               error=r.error if r.finish_s is not None else (r.error or "unfinished"),
                               prompt_tokens=r.prompt_tokens, output_tokens=r.output_tokens)
        if r.token_times is not None:
            record.chunk_times = list(r.token_times)
        elif r.first_token_s is not None:
            # Only the first token's time was kept: TTFT, TPOT and e2e are exact, ITL has no samples.
            record.chunk_times = [r.first_token_s]
        out.append(record)
    return out


def layout_args(specs: Sequence[InstanceSpec]) -> list[str]:
    """``cluster serve`` flags for instances given by role counts (all with one engine config)."""
    counts = {role: sum(1 for s in specs if s.role == role) for role in ("mixed", "prefill", "decode")}
    return ["--instances", str(counts["mixed"]), "--prefill", str(counts["prefill"]), "--decode", str(counts["decode"])]


def run_real(
    config: EngineConfig, specs: Sequence[InstanceSpec], policy: str, requests: Sequence[BenchRequest],
    arrivals: Sequence[float], policy_options: dict[str, Any] | None = None,
) -> RunResult:
    options = [f"{k}={v}" for k, v in (policy_options or {}).items()]
    args = [*layout_args(specs), "--policy", policy, *engine_args(config)]
    for option in options:
        args += ["--policy-option", option]
    with RealCluster(args) as cluster:
        model = cluster.get_json("/v1/models")["data"][0]["id"]
        records = replay(cluster, model, requests, arrivals)
        text = cluster.metrics()
        described = cluster.get_json("/cluster/instances")
    hits = sum(metric_values(text, "edgecloud_prefix_cache_hits_total").values())
    queries = sum(metric_values(text, "edgecloud_prefix_cache_queries_total").values())
    transfer_sum = sum(metric_values(text, "edgecloud_kv_transfer_seconds_sum").values())
    transfer_count = sum(metric_values(text, "edgecloud_kv_transfer_seconds_count").values())
    per_instance = metric_values(text, "edgecloud_instance_prefix_cache_queries_total")
    extra = {"instances": described["instances"],  # prefix cache per instance: labels -> (hits, queries)
             "prefix_cache": {labels: (hits, per_instance[labels]) for labels, hits in
                              metric_values(text, "edgecloud_instance_prefix_cache_hits_total").items()}}
    if transfer_count:
        extra["handover_mean_s"] = transfer_sum / transfer_count
        extra["kv_transfer_bytes"] = sum(metric_values(text, "edgecloud_kv_transfer_bytes_total").values())
    return RunResult("real", policy, records, summarize(records), hits / queries if queries else 0.0, [], extra)


def twin_instances(
    config: EngineConfig, specs: Sequence[InstanceSpec], profile: CalibratedProfile
) -> list[SimInstance]:
    perf, sim_config = local_twin(config, profile.hardware, profile.lone_decode, profile.step_noise)
    return [SimInstance(s.name, perf, sim_config, b"twin", s.role, s.pool) for s in specs]


def run_twin(
    config: EngineConfig, specs: Sequence[InstanceSpec], policy: str, requests: Sequence[BenchRequest],
    arrivals: Sequence[float], profile: CalibratedProfile, policy_options: dict[str, Any] | None = None,
) -> RunResult:
    instances = twin_instances(config, specs, profile)
    transfer = TransferModel(profile.transfer_bandwidth) if profile.transfer_bandwidth else None
    sim = ClusterSimulator(instances, make_policy(policy, **(policy_options or {})), frontend_s=profile.frontend_s,
                           delivery_s=profile.delivery_s, transfer=transfer)
    result = sim.run(bench_requests(requests, arrivals))
    return sim_run_result(policy, result)


def sim_run_result(policy: str, result: SimResult) -> RunResult:
    records = to_request_records(result.records)
    hits = sum(i.kv.prefix_hits for i in result.instances)
    queries = sum(i.kv.prefix_queries for i in result.instances)
    extra = {"simulated_s": result.simulated_s, "wall_s": result.wall_s, "cpu_s": result.cpu_s, "events": result.events,
             "utilization": {i.name: i.busy_s / result.simulated_s if result.simulated_s else math.nan
                             for i in result.instances}}
    handovers = [h.seconds for h in result.handovers]
    if handovers:
        extra["handover_mean_s"] = sum(handovers) / len(handovers)
    return RunResult("sim", policy, records, summarize(records), hits / queries if queries else 0.0, handovers, extra)


def summary_row(run: RunResult, **labels: Any) -> dict[str, Any]:
    """A flat JSON row: labels, latency percentiles (ms), throughput, hit rate, errors."""
    s = run.summary
    row: dict[str, Any] = {**labels, "mode": run.mode, "policy": run.policy, "completed": s.completed,
                           "failed": s.failed, "prefix_hit_rate": run.hit_rate,
                           "output_tok_s": s.output_token_throughput, "req_s": s.request_throughput}
    for metric in ("ttft", "tpot", "e2e"):
        stats = getattr(s, metric)
        for q in ("mean", "p50", "p90", "p99"):
            value = getattr(stats, q)
            row[f"{metric}_ms_{q}"] = value * 1000 if math.isfinite(value) else None
    if "handover_mean_s" in run.extra:
        row["handover_ms_mean"] = run.extra["handover_mean_s"] * 1000
    return row


def json_finite(value: Any) -> Any:
    """``value`` with every non-finite float (a percentile of no samples) as None, for JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_finite(v) for v in value]
    return value
