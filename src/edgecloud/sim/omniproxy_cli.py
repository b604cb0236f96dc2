"""``edgecloud bench omniproxy``: OmniProxy against round-robin, least-outstanding and prefix-aware
P/D routing on one trace, simulated at cluster scale and real on this machine (issue #21;
``edgecloud.sim.omniproxy_bench``)."""

from __future__ import annotations

import argparse
from typing import Any

from edgecloud.errors import USAGE, CLIError, output_file
from edgecloud.sim.cli import _positive

DEFAULT_POLICIES = "round-robin,least-outstanding,prefix-aware,omniproxy"
# DeepSeek-V3 on 10 nodes of 16 Ascend 910C (one instance a node, 5 prefill + 5 decode), and 32 H100
# with Llama-3-8B (16 + 16); each at a multiple of the trace's rate that loads its prefill side.
DEFAULT_SIM_CLUSTERS = "ascend910c:deepseek-v3:16:5:5:8,h100:llama-3-8b:1:16:16:8"


def _cases(text: str) -> list[Any]:
    from edgecloud.sim.omniproxy_bench import policy_case

    try:
        return [policy_case(item) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _clusters(text: str) -> list[Any]:
    from edgecloud.sim.omniproxy_bench import SimCluster

    try:
        return [SimCluster.parse(item) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def register(commands: Any, bench: Any) -> None:
    from edgecloud.llm.cli import add_engine_options

    parser = bench.add_parser(
        "omniproxy", help="OmniProxy vs round-robin, least-outstanding and prefix-aware P/D routing, simulated "
        "and real",
        description="Replay one trace (Mooncake conversation: real shared prefixes) on prefill + decode instances "
        "under each policy: simulated accelerator clusters (HARDWARE:MODEL:DEVICES:PREFILL:DECODE:RATE; every "
        "such row is marked SIMULATED) and a real cluster of CPU instances of the local model. TTFT/TPOT "
        "percentiles, prefix-cache hit rates, and each policy's p99s against round-robin's and prefix-aware's "
        "with 95%% bootstrap intervals (JSON + plot).",
    )
    parser.add_argument("--policies", type=_cases, default=DEFAULT_POLICIES,
                        help="round-robin, least-outstanding, prefix-aware, omniproxy, omniproxy-nohold or "
                        "pd:PREFILL:DECODE, comma-separated")
    parser.add_argument("--trace", default="../shared/traces/mooncake_conversation.jsonl")
    parser.add_argument("--workload-seed", type=int, default=0, help="seed of the prompts and of the rate copies")
    parser.add_argument("--json", dest="json_path", type=output_file)
    parser.add_argument("--plot", dest="plot_path", type=output_file)
    sim = parser.add_argument_group("simulated clusters")
    sim.add_argument("--no-sim", action="store_true", help="real runs only")
    sim.add_argument("--sim-clusters", type=_clusters, default=DEFAULT_SIM_CLUSTERS,
                     help="HARDWARE:MODEL:DEVICES:PREFILL:DECODE:RATE, comma-separated")
    sim.add_argument("--sim-num-requests", type=int, default=1000, help="the trace's first N (before RATE)")
    real = parser.add_argument_group("real CPU cluster")
    real.add_argument("--no-real", action="store_true", help="simulated runs only")
    real.add_argument("--prefill", type=int, default=2)
    real.add_argument("--decode", type=int, default=1)
    real.add_argument("--num-requests", type=int, default=200, help="the trace's first N")
    real.add_argument("--input-scale", type=_positive, default=1 / 32)
    real.add_argument("--output-scale", type=_positive, default=1 / 16)
    real.add_argument("--time-scale", type=_positive, default=1.0, help="arrival times x this")
    add_engine_options(parser)
    parser.set_defaults(handler=_bench_omniproxy, threads=1, model="demo", kv_cache_memory_mb=64.0)


def _bench_omniproxy(args: argparse.Namespace) -> int:
    from edgecloud.bench.workload import LengthScaling
    from edgecloud.llm import InvalidRequestError
    from edgecloud.llm.cli import engine_config_from_args
    from edgecloud.sim.omniproxy_bench import OmniProxyBenchSettings, RealCluster, bench_omniproxy, plot, write_json
    from edgecloud.sim.profiles import ProfileError

    if args.no_sim and args.no_real:
        raise CLIError("--no-sim and --no-real leave nothing to run", USAGE)
    if min(args.prefill, args.decode, args.num_requests, args.sim_num_requests) < 1:
        raise CLIError("--prefill, --decode, --num-requests and --sim-num-requests must be >= 1", USAGE)
    try:
        engine = engine_config_from_args(args)
    except InvalidRequestError as error:
        raise CLIError(f"--{(error.param or 'option').replace('_', '-')}: {error}", USAGE) from None
    real = None
    if not args.no_real:
        real = RealCluster(engine, args.prefill, args.decode, args.num_requests,
                           LengthScaling(args.input_scale, args.output_scale), args.time_scale, args.workload_seed)
    settings = OmniProxyBenchSettings(args.trace, args.policies, [] if args.no_sim else args.sim_clusters,
                                      args.sim_num_requests, real, args.workload_seed)
    try:
        result = bench_omniproxy(settings, progress=lambda line: print(line, flush=True))
    except (ProfileError, ValueError, OSError, RuntimeError) as error:
        raise CLIError(str(error)) from None
    for c in result["comparisons"]:
        ttft, tpot = c["ttft_p99"], c["tpot_p99"]
        if ttft["ratio"] is not None and tpot["ratio"] is not None:
            print(f"{c['policy']:>18} / {c['against']:<13} {c['cluster']}: TTFT p99 x{ttft['ratio']:.3f} "
                  f"[{ttft['low']:.3f}, {ttft['high']:.3f}], TPOT p99 x{tpot['ratio']:.3f} "
                  f"[{tpot['low']:.3f}, {tpot['high']:.3f}]")
    if args.json_path:
        write_json(args.json_path, result)
    if args.plot_path:
        plot(args.plot_path, result)
    return 0
