"""``edgecloud bench ooco``: online and offline work co-located, three pool policies, simulated at
scale and real on this machine (issue #19; ``edgecloud.sim.ooco_bench``, ``edgecloud.sim.ooco_real``)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from edgecloud.errors import USAGE, CLIError, output_file
from edgecloud.sim.cli import _positive


def _loads(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected loads > 0 separated by commas, got {text!r}")
    return values


def _clusters(text: str) -> list[tuple[str, int, int]]:
    """``HARDWARE:INSTANCES:STRICT`` items separated by commas."""
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            hardware, instances, strict = parts[0], int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            raise argparse.ArgumentTypeError(f"expected HARDWARE:INSTANCES:STRICT, got {item!r}") from None
        if not 0 < strict < instances:
            raise argparse.ArgumentTypeError(f"{item!r}: STRICT must be between 1 and INSTANCES - 1")
        out.append((hardware, instances, strict))
    return out


def register(commands: Any, bench: Any) -> None:
    from edgecloud.llm.cli import add_engine_options

    parser = bench.add_parser(
        "ooco", help="online + offline co-location: separate, priority and ooco pools, simulated and real",
        description="Online traffic (the Azure conversation trace's arrivals, rate scaled to the cluster) and an "
        "offline batch (the Azure code trace's lengths, through the Batch API) on one cluster under the policies "
        "separate, priority and ooco: offline tokens/s, online SLO attainment, TTFT/TPOT p99, preemptions. "
        "Simulated at scale (16 H100 with Llama-3-8B by default; every such row is marked simulated) and real on "
        "a CPU cluster of the local model (needs --hardware, a profile from `edgecloud sim calibrate`).",
    )
    parser.add_argument("--json", dest="json_path", type=output_file)
    parser.add_argument("--plot", dest="plot_path", type=output_file)
    parser.add_argument("--policies", default="separate,priority,pd-priority,ooco-pd,ooco")
    parser.add_argument("--online-trace", default="../shared/traces/azure_llm_2023_conv.csv")
    parser.add_argument("--offline-trace", default="../shared/traces/azure_llm_2023_code.csv")
    sim = parser.add_argument_group("simulated clusters")
    sim.add_argument("--no-sim", action="store_true", help="real runs only")
    sim.add_argument("--sim-clusters", type=_clusters, default=_clusters("h100:16:8"),
                     help="HARDWARE:INSTANCES:STRICT, comma-separated (e.g. h100:16:8,ascend910c:16:8)")
    sim.add_argument("--sim-model", default="llama-3-8b")
    sim.add_argument("--loads", type=_loads, default=[0.25, 0.5, 1.0, 1.5], help="online load, x the 1.0 rate")
    sim.add_argument("--sim-duration", type=_positive, default=60.0, help="seconds of the online trace")
    sim.add_argument("--sim-drain", type=_positive, default=30.0, help="seconds simulated after the last arrival")
    sim.add_argument("--sim-ttft-slo-ms", type=_positive, default=1000.0)
    sim.add_argument("--sim-tpot-slo-ms", type=_positive, default=50.0)
    sim.add_argument("--sim-base-rate", type=_positive, default=None,
                     help="trace rate multiplier of load 1.0 (default: found by bisection on separate)")
    real = parser.add_argument_group("real CPU cluster")
    real.add_argument("--no-real", action="store_true", help="simulated runs only")
    real.add_argument("--hardware", help="profile from `edgecloud sim calibrate` (the ooco policy's cost model)")
    real.add_argument("--strict", type=int, default=1, help="strict-pool instances")
    real.add_argument("--relaxed", type=int, default=2, help="relaxed-pool instances")
    real.add_argument("--num-online", type=int, default=120, help="online requests (the trace's first N)")
    real.add_argument("--time-scale", type=_positive, default=0.25, help="online arrival times x this")
    real.add_argument("--input-scale", type=_positive, default=1 / 32)
    real.add_argument("--output-scale", type=_positive, default=1 / 16)
    real.add_argument("--offline-lines", type=int, default=3000, help="requests in the offline batch")
    real.add_argument("--batch-concurrency", type=int, default=48)
    real.add_argument("--slo-factor", type=_positive, default=2.0, help="SLO = this x the idle cluster's p99")
    add_engine_options(parser)
    parser.set_defaults(handler=_bench_ooco, threads=1, model="demo", kv_cache_memory_mb=64.0)


def _bench_ooco(args: argparse.Namespace) -> int:
    from edgecloud.bench.machine import LoadWatch
    from edgecloud.bench.workload import LengthScaling
    from edgecloud.llm import InvalidRequestError
    from edgecloud.llm.cli import engine_config_from_args

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if not args.no_real and not args.hardware:
        raise CLIError("the real runs need --hardware (a profile from `edgecloud sim calibrate`), or --no-real",
                       USAGE)
    try:
        engine = engine_config_from_args(args)
    except InvalidRequestError as error:
        raise CLIError(f"--{(error.param or 'option').replace('_', '-')}: {error}", USAGE) from None
    rows: list[dict[str, Any]] = []

    def show(row: dict[str, Any]) -> None:
        tag = "SIMULATED" if row["simulated"] else "real"
        load = f" load {row['online_load']:.2f}x" if "online_load" in row else ""
        print(f"{tag:>9} {row['policy']:>10}{load}: offline {row['offline_tok_s']:10.0f} tok/s, SLO attainment "
              f"{row['slo_attainment']:.3f} (TTFT {row['ttft_attainment']:.3f}, TPOT {row['tpot_attainment']:.3f}), "
              f"p99 TTFT {row['online_ttft_ms_p99'] or math.nan:8.1f} ms TPOT "
              f"{row['online_tpot_ms_p99'] or math.nan:7.1f} ms, preemptions {row['preemptions']:.0f}", flush=True)

    watch = LoadWatch.begin(self_contained=False)
    try:
        if not args.no_sim:
            from edgecloud.sim.ooco_bench import SimOOCOSettings, bench_sim

            for hardware, instances, strict in args.sim_clusters:
                settings = SimOOCOSettings(
                    hardware=hardware, model=args.sim_model, instances=instances, strict=strict,
                    online_trace=args.online_trace, offline_trace=args.offline_trace,
                    duration_s=args.sim_duration, drain_s=args.sim_drain, loads=args.loads, policies=policies,
                    ttft_slo_ms=args.sim_ttft_slo_ms, tpot_slo_ms=args.sim_tpot_slo_ms,
                    base_rate_scale=args.sim_base_rate)
                rows += bench_sim(settings, show)
        if not args.no_real:
            from edgecloud.sim.ooco_real import RealOOCOSettings, bench_real

            real = RealOOCOSettings(
                engine, args.hardware, args.strict, args.relaxed, args.online_trace, args.offline_trace,
                args.num_online, args.time_scale, LengthScaling(args.input_scale, args.output_scale),
                args.offline_lines, args.batch_concurrency, args.slo_factor, policies=policies)
            rows += bench_real(real, show)
    except (ValueError, OSError, RuntimeError) as error:
        raise CLIError(str(error)) from None
    machine = watch.finish()
    if args.json_path:
        from edgecloud.sim.bench import write_json

        write_json(args.json_path, {"cases": rows, "machine": machine.as_dict()})
    if args.plot_path:
        plot(args.plot_path, rows)
    return 0


def plot(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Per simulated cluster: offline tokens/s and online SLO attainment against online load, one
    line per policy; the real cluster: both per policy as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clusters = list(dict.fromkeys(r["cluster"] for r in rows if r["mode"] == "sim"))
    real = [r for r in rows if r["mode"] == "real" and "idle" not in r["policy"]]
    panels = len(clusters) + (1 if real else 0)
    figure, axes = plt.subplots(panels, 2, figsize=(12, 3.6 * panels), squeeze=False)
    for i, cluster in enumerate(clusters):
        mine = [r for r in rows if r["mode"] == "sim" and r["cluster"] == cluster]
        for policy in dict.fromkeys(r["policy"] for r in mine):
            points = sorted((r["online_load"], r) for r in mine if r["policy"] == policy)
            loads = [p[0] for p in points]
            axes[i][0].plot(loads, [p[1]["offline_tok_s"] / 1000 for p in points], marker="o", label=policy)
            axes[i][1].plot(loads, [p[1]["slo_attainment"] for p in points], marker="o", label=policy)
        axes[i][0].set_ylabel("offline k tokens/s")
        axes[i][1].set_ylabel("online SLO attainment")
        axes[i][1].axhline(0.99, color="grey", linestyle="--", linewidth=0.8)
        for axis in axes[i]:
            axis.set_xlabel("online load (x the rate separate just holds)")
            axis.set_title(f"SIMULATED: {cluster}", fontsize=9)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
    if real:
        names = [r["policy"] for r in real]
        axes[-1][0].bar(names, [r["offline_tok_s"] for r in real])
        axes[-1][0].set_ylabel("offline tokens/s")
        axes[-1][1].bar(names, [r["slo_attainment"] for r in real])
        axes[-1][1].axhline(0.99, color="grey", linestyle="--", linewidth=0.8)
        axes[-1][1].set_ylabel("online SLO attainment")
        for axis in axes[-1]:
            axis.set_title(f"real: {real[0]['cluster']}", fontsize=9)
            axis.grid(alpha=0.3, axis="y")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
