"""``edgecloud edge route`` (the NetGPT router) and ``edgecloud edge netgpt bench``.

The ``edge`` command is shared with DisCEdge (``edgecloud.edge``): whichever registers first
creates it, the other adds its verbs to it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgecloud.errors import USAGE, CLIError, output_file


def edge_commands(commands: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """The sub-commands of ``edgecloud edge``, created if no other system made them yet."""
    parser = commands.choices.get("edge")
    if parser is None:
        parser = commands.add_parser("edge", help="edge systems: DisCEdge context store, NetGPT routing",
                                     description="Edge systems: NetGPT's network-aware edge/cloud router.")
    verbs = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if verbs is None:
        verbs = parser.add_subparsers(dest="edge_command", metavar="<verb>")
        verbs.required = True
    return verbs


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    verbs = edge_commands(commands)
    route = verbs.add_parser(
        "route", help="NetGPT: an OpenAI-compatible router between an edge and a cloud agent",
        description="Answer each chat request at the edge agent, or fall back to the cloud agent when the edge "
        "answer's score is below the threshold that the measured network (RTT, bandwidth) and the price set "
        "(docs/netgpt.md). A failing cloud falls back to the edge answer and says so in X-NetGPT-* headers.")
    route.add_argument("--edge", required=True, help="the edge agent's base URL (an OpenAI-compatible server)")
    route.add_argument("--cloud", required=True, help="the cloud agent's base URL")
    route.add_argument("--edge-model", required=True)
    route.add_argument("--cloud-model", required=True)
    route.add_argument("--calibration", type=Path, required=True,
                       help="JSON of p_e(s) and p_c(s): a bench result (its 'calibration') or Calibration.to_dict()")
    route.add_argument("--price", default="standard",
                       help="price schedule: cheap, standard, premium, or a JSON file of PriceSchedule fields")
    route.add_argument("--score", default=None, help="edge score (default: the bench result's chosen score, "
                       "else valid_mean_prob)")
    route.add_argument("--served-model-name", default="netgpt")
    route.add_argument("--host", default="127.0.0.1")
    route.add_argument("--port", type=int, default=8100)
    route.add_argument("--cloud-timeout-s", type=float, default=60.0)
    route.add_argument("--probe-interval-s", type=float, default=5.0)
    route.add_argument("--prior-bandwidth-mbps", type=float, default=None,
                       help="network estimate to use until a probe succeeds (with --prior-rtt-ms)")
    route.add_argument("--prior-rtt-ms", type=float, default=None)
    route.add_argument("--cloud-tool-choice", default=None, choices=("required",),
                       help="ask the cloud for a grammar-constrained call when the client left tool_choice "
                       "to the model")
    route.add_argument("--offload-log", type=output_file, default=None,
                       help="append offloaded requests and the cloud's answers here (JSON lines)")
    route.set_defaults(handler=_route)

    netgpt = verbs.add_parser("netgpt", help="NetGPT benchmarks", description="NetGPT benchmarks.")
    netgpt_verbs = netgpt.add_subparsers(dest="netgpt_command", metavar="<verb>")
    netgpt_verbs.required = True
    b = netgpt_verbs.add_parser(
        "bench", help="NetGPT against always-edge, always-cloud and fixed thresholds over network states and prices",
        description="Serve the edge and cloud agents, answer BFCL calibration (train functions) and test "
        "(held-out functions) questions with both, then evaluate the routing policies over a grid of netem "
        "network states and price schedules.")
    b.add_argument("--edge-model", default="edge-sft", help="edge-sft (the shipped adapter, merged) or a model dir")
    b.add_argument("--cloud-model", default="edge-sft",
                   help="edge-sft, cloud-sft or a model dir (the cloud is always asked for grammar-constrained calls)")
    b.add_argument("--num-test", type=int, default=48)
    b.add_argument("--num-calibration", type=int, default=32)
    b.add_argument("--threads", type=int, default=1, help="torch threads of each agent")
    b.add_argument("--rounds-json", type=Path, default=None, help="RL rounds (scripts/netgpt_rl.py --json) to include")
    b.add_argument("--work-dir", type=Path, default=Path("netgpt-bench"))
    b.add_argument("--json", type=output_file, default="netgpt.json")
    b.add_argument("--plot", type=output_file, default=None)
    b.set_defaults(handler=_bench)


def _load_json(path: Path, option: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as error:
        raise CLIError(f"{option} {path}: {error.strerror}", USAGE) from error
    except json.JSONDecodeError as error:
        raise CLIError(f"{option} {path}: not JSON ({error})", USAGE) from error


def _route(args: argparse.Namespace) -> int:
    import uvicorn

    from edgecloud.edge.netgpt.policy import PRICES, Calibration, NetGPTPolicy, NetworkState, PriceSchedule
    from edgecloud.edge.netgpt.router import NetGPTRouter, RouterSettings, build_app
    from edgecloud.errors import listen_failed

    data = _load_json(args.calibration, "--calibration")
    try:
        calibration = Calibration.from_dict(data.get("calibration", data))
    except TypeError as error:
        raise CLIError(f"--calibration {args.calibration}: not a calibration ({error})", USAGE) from error
    score = args.score or data.get("score", {}).get("chosen") or "valid_mean_prob"
    if args.price in PRICES:
        price = PRICES[args.price]
    else:
        try:
            price = PriceSchedule.from_dict(_load_json(Path(args.price), "--price"))
        except (TypeError, ValueError) as error:
            raise CLIError(f"--price {args.price}: {error}", USAGE) from error
    if (args.prior_bandwidth_mbps is None) != (args.prior_rtt_ms is None):
        raise CLIError("--prior-bandwidth-mbps and --prior-rtt-ms go together", USAGE)
    try:
        prior = None if args.prior_rtt_ms is None else NetworkState(args.prior_bandwidth_mbps, args.prior_rtt_ms)
        settings = RouterSettings(
            edge_url=args.edge, cloud_url=args.cloud, edge_model=args.edge_model, cloud_model=args.cloud_model,
            served_model_name=args.served_model_name, score=score, cloud_timeout_s=args.cloud_timeout_s,
            probe_interval_s=args.probe_interval_s, offload_log=Path(args.offload_log) if args.offload_log else None,
            prior=prior, cloud_tool_choice=args.cloud_tool_choice)
    except ValueError as error:
        raise CLIError(str(error), USAGE) from error
    router = NetGPTRouter(settings, NetGPTPolicy(calibration), price)
    config = uvicorn.Config(build_app(router), host=args.host, port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    try:
        server.run()
    except OSError as error:
        raise listen_failed(error, args.host, args.port, "--port") from error
    return 0


def _bench(args: argparse.Namespace) -> int:
    from edgecloud.edge.netgpt.bench import BenchConfig, plot, plot_threshold, run_bench
    from edgecloud.edge.netgpt.models import agent_model_dir

    for name in ("num_test", "num_calibration", "threads"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", USAGE)
    try:
        edge, cloud = agent_model_dir(args.edge_model), agent_model_dir(args.cloud_model)
    except FileNotFoundError as error:
        raise CLIError(str(error), USAGE) from error
    rounds = _load_json(args.rounds_json, "--rounds-json").get("rounds", []) if args.rounds_json else None
    config = BenchConfig(edge_model=str(edge), cloud_model=str(cloud), num_test=args.num_test,
                         num_calibration=args.num_calibration, threads=args.threads)
    result = run_bench(config, args.work_dir, rounds)
    Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        plot(result, Path(args.plot))
        plot_threshold(result["threshold_curves"], Path(args.plot).with_name(Path(args.plot).stem + "_threshold.png"))
    ok = sum(s["netgpt_on_or_above_fixed_frontier"] for s in result["states"])
    print(f"netgpt on or above the fixed thresholds' frontier in {ok}/{len(result['states'])} states; "
          f"wrote {args.json}")
    return 0
