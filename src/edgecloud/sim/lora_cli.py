"""``edgecloud bench lora``: rank skew and remote fetch measured here, LoRA placement policies
simulated at cluster scale (docs/lora.md)."""

from __future__ import annotations

import argparse
from typing import Any

from edgecloud.errors import USAGE, CLIError, output_file
from edgecloud.sim.bench_cli import _positive

DEFAULT_TRACE = "../shared/traces/azure_llm_2023_conv.csv"


def _scales(text: str) -> tuple[float, ...]:
    values = tuple(_positive(part) for part in text.split(",") if part.strip())
    if not values or list(values) != sorted(values):
        raise argparse.ArgumentTypeError(f"expected increasing numbers > 0 separated by commas, got {text!r}")
    return values


def _ranks(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ranks separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"ranks must be >= 1, got {text!r}")
    return values


def register(commands: Any, bench: Any) -> None:
    parser = bench.add_parser(
        "lora", help="LoRA adapters: rank skew and remote fetch measured here, placement policies simulated",
        description="Measure the rank skew (decode step of mixed- vs uniform-rank batches) and an adapter "
        "fetched from a peer engine core vs loaded from disk on this machine, then simulate the policies slora, "
        "affinity and loraserve on a cluster of accelerators (Azure trace arrivals, adapters of drifting Zipf "
        "popularity): SLO attainment and p99 TTFT over a rate grid, throughput at the SLO, fewest instances "
        "that meet it. Simulated rows are marked.",
    )
    parser.add_argument("--trace", default=DEFAULT_TRACE, help="Azure .csv (or Mooncake .jsonl) trace: arrivals "
                        "and lengths")
    parser.add_argument("--policies", default="slora,affinity,loraserve")
    parser.add_argument("--duration", type=_positive, default=10.0,
                        help="seconds of the trace replayed (its first seconds, then multiplied by each rate)")
    parser.add_argument("--warmup", type=float, default=0.0,
                        help="seconds of the trace replayed before --duration and left out of the figures "
                        "(0: measure from empty caches)")
    parser.add_argument("--rate-scales", type=_scales, default=(50.0, 100.0, 150.0, 200.0, 300.0),
                        help="arrival rates tried, as multiples of the trace's")
    parser.add_argument("--output-scale", type=_positive, default=0.25, help="multiply the trace's output lengths")
    adapters = parser.add_argument_group("adapters")
    adapters.add_argument("--num-adapters", type=int, default=1000)
    adapters.add_argument("--ranks", type=_ranks, default=(8, 16, 32, 64, 128))
    adapters.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent of adapter popularity")
    adapters.add_argument("--drift-period", type=_positive, default=2.5,
                          help="seconds between popularity shifts")
    adapters.add_argument("--drift-shift", type=int, default=10, help="places the popularity order rotates by")
    adapters.add_argument("--max-loras", type=int, default=16, help="device slots per simulated instance")
    adapters.add_argument("--rebalance", type=_positive, default=1.0, help="loraserve's rebalancing period (s)")
    adapters.add_argument("--window", type=_positive, default=2.0,
                          help="half-life (s) of loraserve's per-adapter load estimate")
    adapters.add_argument("--host-adapters", type=int, default=128, help="adapters in host memory per instance")
    adapters.add_argument("--sync-loads", action="store_true",
                          help="read an adapter in the step that needs it, stalling every request (vLLM's worker; "
                          "the engine's lora_async_loads=False); default: a loader reads it off the step and only "
                          "its requests wait, real and simulated")
    adapters.add_argument("--no-register", action="store_true",
                          help="simulated loraserve: no adapter placed before the run, each read from disk at its "
                          "first use in the cluster (sessions 7-8); default: every adapter registered in one "
                          "instance's host memory ahead, as the paper places them, and fetched from there over RDMA")
    adapters.add_argument("--baselines-hold-all", action="store_true",
                          help="simulated slora and affinity: every adapter in every instance's host memory from the "
                          "start (S-LoRA's premise; beyond --host-adapters), so a miss is a host-to-device copy; "
                          "default: each instance's own host-memory LRU of --host-adapters, a miss read from disk")
    slo = parser.add_argument_group("SLO")
    slo.add_argument("--slo-ttft", type=_positive, default=1.0, help="seconds")
    slo.add_argument("--slo-tpot", type=_positive, default=0.1, help="seconds")
    sim = parser.add_argument_group("simulated cluster")
    sim.add_argument("--sim-hardware", default="h100")
    sim.add_argument("--sim-model", default="llama-3-8b")
    sim.add_argument("--sim-instances", type=int, default=32)
    sim.add_argument("--no-sim", action="store_true", help="skip the simulated policy runs")
    real = parser.add_argument_group("real measurements on this machine")
    real.add_argument("--no-real", action="store_true", help="skip the rank skew and fetch measurements")
    real.add_argument("--model", default="demo", help="model of the real measurements")
    real.add_argument("--threads", type=int, default=1)
    real.add_argument("--real-instances", type=int, default=3,
                      help="CPU instances of the real policy runs (0: no real policy runs)")
    real.add_argument("--real-requests", type=int, default=150)
    real.add_argument("--real-rate", type=_positive, default=3.0, help="requests/s of the real policy runs")
    real.add_argument("--real-adapters", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", dest="json_path", type=output_file)
    parser.add_argument("--plot", dest="plot_path", type=output_file)
    parser.set_defaults(handler=_bench_lora)


def _bench_lora(args: argparse.Namespace) -> int:
    from edgecloud.bench.metrics import Slo
    from edgecloud.sim.bench import write_json
    from edgecloud.sim.lora import AdapterPopulation, LoRASimSettings
    from edgecloud.sim.lora_bench import LoRABenchSettings, RealClusterBench, bench_lora, plot
    from edgecloud.sim.lora_real import RealLoRASettings
    from edgecloud.sim.profiles import ProfileError

    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    try:
        population = AdapterPopulation(args.num_adapters, args.ranks, args.zipf, args.drift_period, args.drift_shift,
                                       args.seed)
        lora = LoRASimSettings(args.max_loras, max(args.ranks), args.host_adapters, async_loads=not args.sync_loads,
                               register=not args.no_register, baselines_hold_all=args.baselines_hold_all)
        from edgecloud.cluster.policies import POLICIES

        for policy in policies:
            if policy not in POLICIES:
                raise ValueError(f"--policies: unknown policy {policy!r}; known: {', '.join(sorted(POLICIES))}")
        if args.warmup < 0:
            raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
        if args.sim_instances < 1:
            raise ValueError(f"--sim-instances must be >= 1, got {args.sim_instances}")
        real_cluster = None
        if args.real_instances > 0 and not args.no_real:
            real_cluster = RealClusterBench(
                RealLoRASettings(args.model, args.real_instances, args.threads, async_loads=not args.sync_loads),
                AdapterPopulation(args.real_adapters, args.ranks, args.zipf, 15.0, 3, args.seed),
                args.real_requests, args.real_rate)
    except ValueError as error:
        raise CLIError(str(error), USAGE) from None
    settings = LoRABenchSettings(
        args.trace, policies, population, lora, Slo(ttft=args.slo_ttft, tpot=args.slo_tpot), args.sim_hardware,
        args.sim_model, args.sim_instances, args.duration, args.rebalance, args.window, args.rate_scales,
        args.output_scale, warmup_s=args.warmup, real=not args.no_real,
        real_model=args.model, real_threads=args.threads, real_cluster=real_cluster, simulate=not args.no_sim,
        seed=args.seed,
    )
    try:
        result = bench_lora(settings)
    except (ProfileError, ValueError, OSError, RuntimeError) as error:
        raise CLIError(str(error)) from None
    for row in result["cases"]:
        if row["mode"] == "real":
            print(f"REAL {row['policy']:>10} on {row['cluster']}: {row['throughput_tok_s']:.1f} tok/s, SLO attainment "
                  f"{row['slo_attainment']:.3f}, p99 TTFT {row['ttft_ms_p99']:.0f} ms")
            continue
        print(f"SIMULATED {row['policy']:>10} on {row['cluster']}: throughput at SLO {row['throughput_tok_s']:.0f} "
              f"tok/s (rate x{row['rate_scale_at_slo']}), p99 TTFT {row['ttft_ms_p99']:.0f} ms at rate "
              f"x{row['ttft_rate_scale']}, fewest instances for the SLO {row['min_instances_for_slo']}")
    fetch = result.get("fetch")
    if fetch:
        print(f"REAL fetch of a rank-{fetch['rank']} adapter ({fetch['bytes'] / 1e6:.1f} MB), medians of "
              f"{fetch['repeats']}: disk cold {fetch['disk_cold_ms_p50']:.1f} ms, warm {fetch['disk_ms_p50']:.1f} ms; "
              f"peer direct {fetch['peer_ms_p50']:.1f} ms, relayed {fetch['peer_relay_ms_p50']:.1f} ms")
    if args.json_path:
        write_json(args.json_path, result)
    if args.plot_path:
        plot(args.plot_path, result)
    return 0
