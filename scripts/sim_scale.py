"""The simulator's speed at cluster scale (issue #18): the Azure conversation trace's hour with its
arrival rate scaled to keep N simulated H100 instances of Llama-3-8B near saturation, simulated
step by step, with runs of decode steps advanced at once (``decode_runs``) or incrementally
(``incremental``, the default here), on one core; the paths on the same slice must give the same
latencies. Writes a small JSON (no
per-request records) with the CPU, the load and the process's peak memory.

    taskset -c 0 python scripts/sim_scale.py --instances 64 --rate-scale 160 --duration 300 \
        --step-duration 60 --json docs/data/sim_scale_64.json

The simulator imports no torch: one Python thread does all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from dataclasses import replace
from typing import Any

from edgecloud.bench.machine import cpu_model
from edgecloud.bench.traces import TraceRequest, read_trace
from edgecloud.cluster.policies import make_policy
from edgecloud.sim.compare import sim_run_result
from edgecloud.sim.run import SimClusterSpec, build_instances
from edgecloud.sim.simulator import ClusterSimulator
from edgecloud.sim.workload import iter_trace_requests, scale_rate

TRACE = "../shared/traces/azure_llm_2023_conv.csv"


def window(trace: str, start_s: float, duration_s: float) -> list[TraceRequest]:
    """The trace's requests of ``[start_s, start_s + duration_s)``, shifted to start at 0."""
    return [replace(r, arrival_s=r.arrival_s - start_s) for r in read_trace(trace)
            if start_s <= r.arrival_s < start_s + duration_s]


def run(spec: SimClusterSpec, policy: str, trace: str, rate_scale: float, start_s: float, duration: float,
        mode: str, times: list[tuple[float | None, float | None]] | None = None) -> dict[str, Any]:
    """One replay; ``mode``: ``step`` (step by step), ``runs`` (decode runs) or ``incremental``."""
    start = time.process_time()
    instances, link, max_len = build_instances(spec)
    workload = iter_trace_requests(scale_rate(window(trace, start_s, duration), rate_scale), max_len=max_len)
    sim = ClusterSimulator(instances, make_policy(policy), transfer=link, record_token_times=False,
                           decode_runs=mode == "runs", incremental=mode == "incremental")
    result = sim.run(workload)
    total_cpu = time.process_time() - start
    if times is not None:  # each request's first-token and finish times, to compare the paths by
        times.extend((r.first_token_s, r.finish_s) for r in result.records)
    summary = sim_run_result(policy, result).summary
    busy = sum(i.busy_s for i in instances) / len(instances) / result.simulated_s
    ms = {f"{m}_{q}_ms": round(getattr(getattr(summary, m), q) * 1000, 3)
          for m in ("ttft", "tpot", "e2e") for q in ("p50", "p90", "p99")}
    return {
        "cluster": spec.describe(), "accelerators": spec.accelerators, "policy": policy,
        "mode": mode, "trace_window_s": [start_s, start_s + duration], "rate_scale": rate_scale,
        "requests": len(result.records), "finished": sum(r.finish_s is not None for r in result.records),
        "simulated_s": round(result.simulated_s, 3), "events": result.events,
        "cpu_s": round(result.cpu_s, 2), "wall_s": round(result.wall_s, 2),
        "cpu_s_with_setup": round(total_cpu, 2),
        "simulated_s_per_cpu_s": round(result.cpu_speedup, 2),
        "mean_busy_fraction": round(busy, 3), **ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", default=TRACE)
    parser.add_argument("--instances", type=int, default=64)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--model", default="llama-3-8b")
    parser.add_argument("--policy", default="round-robin")
    parser.add_argument("--rate-scale", type=float, required=True)
    parser.add_argument("--start", type=float, default=0.0, help="the trace window's start (s into the hour)")
    parser.add_argument("--duration", type=float, required=True, help="trace seconds in --mode")
    parser.add_argument("--mode", default="incremental", choices=("step", "runs", "incremental"))
    parser.add_argument("--step-duration", type=float, default=0.0,
                        help="trace seconds simulated by --compare's paths first (0: none)")
    parser.add_argument("--compare", default="step,incremental",
                        help="the paths the --step-duration slice is simulated by (comma-separated)")
    parser.add_argument("--json", dest="json_path", required=True)
    args = parser.parse_args()
    spec = SimClusterSpec(model=args.model, mixed=args.instances, devices=args.devices)
    out: dict[str, Any] = {"simulated": True, "cpu": cpu_model(), "affinity": sorted(os.sched_getaffinity(0)),
                           "loadavg_before": os.getloadavg(), "runs": []}
    if args.step_duration:
        first: list[tuple[float | None, float | None]] | None = None
        for mode in args.compare.split(","):
            times: list[tuple[float | None, float | None]] = []
            out["runs"].append(run(spec, args.policy, args.trace, args.rate_scale, args.start, args.step_duration,
                                   mode, times))
            if first is None:
                first = times
            else:  # per request, against the first path: the largest difference of either time
                assert len(times) == len(first)
                same_finished = all((a[1] is None) == (b[1] is None) for a, b in zip(first, times, strict=True))
                out["runs"][-1]["max_abs_time_diff_s_vs_" + args.compare.split(",")[0]] = max(
                    abs(x - y) for a, b in zip(first, times, strict=True) for x, y in zip(a, b, strict=True)
                    if x is not None and y is not None)
                out["runs"][-1]["same_requests_finished"] = same_finished
            print(json.dumps(out["runs"][-1]), flush=True)
    if args.duration:
        out["runs"].append(run(spec, args.policy, args.trace, args.rate_scale, args.start, args.duration, args.mode))
        print(json.dumps(out["runs"][-1]), flush=True)
    out["loadavg_after"] = os.getloadavg()
    out["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    with open(args.json_path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print("max RSS", out["max_rss_mb"], "MB")


if __name__ == "__main__":
    main()
