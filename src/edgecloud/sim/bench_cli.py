"""``edgecloud bench cluster``'s options (registered by ``edgecloud.sim.cli``)."""

from __future__ import annotations

import argparse
from typing import Any

# bench_cli's _positive is imported by other CLIs (bench lora); one definition, in cluster.cli
from edgecloud.cluster.cli import positive_arg as _positive
from edgecloud.errors import USAGE, CLIError, output_file

DEFAULT_TRACE = "../shared/traces/mooncake_conversation.jsonl"


def _pd(text: str) -> tuple[int, int]:
    p, sep, d = text.partition(":")
    try:
        prefill, decode = int(p), int(d)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected P:D (prefill and decode instances), got {text!r}") from None
    if not sep or prefill < 1 or decode < 1:
        raise argparse.ArgumentTypeError(f"expected P:D with both >= 1, got {text!r}")
    return prefill, decode


def register_bench(bench: Any) -> None:
    from edgecloud.llm.cli import add_engine_options

    parser = bench.add_parser(
        "cluster", help="routing policies and P/D on one trace: a real CPU cluster and the simulator side by side",
        description="Replay one trace on a real cluster of CPU instances for each routing policy (and P/D), in "
        "the simulator calibrated for this machine (--hardware), and on a simulated accelerator cluster "
        "(--sim-hardware); report TTFT/TPOT/e2e, throughput and prefix-cache hit rates (JSON + plot).",
    )
    cases = parser.add_argument_group("cases")
    cases.add_argument("--instances", type=int, default=2, help="mixed instances of each policy's real cluster")
    cases.add_argument("--policies", default="round-robin,prefix-aware", help="policies on mixed instances")
    cases.add_argument("--pd", type=_pd, default=None, metavar="P:D",
                       help="also P/D with P prefill and D decode instances (policy pd)")
    cases.add_argument("--no-real", action="store_true", help="simulated runs only")
    cases.add_argument("--hardware", help="profile from `edgecloud sim calibrate`: adds the simulated twin")
    scale = parser.add_argument_group("simulated accelerator cluster")
    scale.add_argument("--sim-hardware", help="a100, h100, h200 or ascend910c: adds a simulated run at scale")
    scale.add_argument("--sim-model", default="llama-3-8b")
    scale.add_argument("--sim-instances", type=int, default=16)
    scale.add_argument("--sim-devices", type=int, default=1)
    scale.add_argument("--sim-rate-scale", type=_positive, default=1.0, help="multiply the trace's arrival rate")
    scale.add_argument("--sim-num-requests", type=int, default=None, help="default: the whole trace")
    scale.add_argument("--sim-input-scale", type=_positive, default=1.0)
    scale.add_argument("--sim-output-scale", type=_positive, default=1.0)
    load = parser.add_argument_group("workload of the CPU runs")
    load.add_argument("--trace", default=DEFAULT_TRACE, help="Azure .csv or Mooncake .jsonl trace")
    load.add_argument("--num-requests", type=int, default=200)
    load.add_argument("--input-scale", type=_positive, default=1 / 32)
    load.add_argument("--output-scale", type=_positive, default=1 / 16)
    load.add_argument("--max-input-len", type=int, default=None,
                      help="cap on scaled prompt length (default: the model's context less the output cap)")
    load.add_argument("--max-output-len", type=int, default=None,
                      help="cap on scaled output length (default: a quarter of the model's context)")
    load.add_argument("--hash-block-tokens", type=int, default=None,
                      help="Mooncake: tokens per hash id (default 512 × --input-scale)")
    load.add_argument("--time-scale", type=_positive, default=1.0)
    load.add_argument("--workload-seed", type=int, default=0, help="seed of the prompts' random tokens")
    parser.add_argument("--json", dest="json_path", type=output_file)
    parser.add_argument("--plot", dest="plot_path", type=output_file)
    add_engine_options(parser)
    parser.set_defaults(handler=_bench_cluster, threads=1, model="demo", kv_cache_memory_mb=64.0)


def _bench_cluster(args: argparse.Namespace) -> int:
    from edgecloud.bench.workload import LengthScaling
    from edgecloud.llm import InvalidRequestError
    from edgecloud.llm.cli import engine_config_from_args
    from edgecloud.sim.bench import Case, ClusterBenchSettings, ScaleSettings, bench_cluster, plot, write_json
    from edgecloud.sim.profiles import ProfileError, load_hardware

    try:
        engine = engine_config_from_args(args)
        scaling = LengthScaling(args.input_scale, args.output_scale, args.max_input_len, args.max_output_len)
        twin = load_hardware(args.hardware)[1] if args.hardware else None
    except (InvalidRequestError, ValueError, ProfileError) as error:
        raise CLIError(str(error), USAGE) from None
    if args.hardware and twin is None:
        raise CLIError("--hardware takes a profile from `edgecloud sim calibrate`; presets go to --sim-hardware", USAGE)
    cases = [Case(p.strip(), mixed=args.instances) for p in args.policies.split(",") if p.strip()]
    if args.pd:
        cases.append(Case("pd", prefill=args.pd[0], decode=args.pd[1]))
    scale = None
    if args.sim_hardware:
        scale = ScaleSettings(args.sim_hardware, args.sim_model, args.sim_instances, args.sim_devices,
                              args.sim_rate_scale, args.sim_num_requests, args.sim_input_scale, args.sim_output_scale)
    settings = ClusterBenchSettings(args.trace, cases, engine, args.num_requests, scaling, args.time_scale,
                                    args.hash_block_tokens, args.workload_seed, not args.no_real, twin, scale)
    try:
        result = bench_cluster(settings)
    except (ProfileError, ValueError, OSError, RuntimeError) as error:
        raise CLIError(str(error)) from None
    for row in result["cases"]:
        tag = "SIMULATED " if row.get("simulated") else ""
        print(f"{tag}{row['mode']:>4} {row['case']:>32}: TTFT p50/p99 {row['ttft_ms_p50'] or 0:8.1f} / "
              f"{row['ttft_ms_p99'] or 0:8.1f} ms, TPOT p50/p99 {row['tpot_ms_p50'] or 0:6.1f} / "
              f"{row['tpot_ms_p99'] or 0:6.1f} ms, hit rate {row['prefix_hit_rate']:.1%}, "
              f"{row['completed']} done, {row['failed']} failed")
    if args.json_path:
        write_json(args.json_path, result)
    if args.plot_path:
        plot(args.plot_path, result, title=f"bench cluster: {args.trace.rsplit('/', 1)[-1]}")
    return 0
