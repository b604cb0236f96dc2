"""``edgecloud cluster serve``: N engine instances behind one OpenAI-compatible router."""

from __future__ import annotations

import argparse
from typing import Any

from edgecloud.errors import USAGE, CLIError
from edgecloud.llm.cli import add_engine_options, engine_config_from_args


def count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def policy_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE``; the value is read as an integer or a number when it is one."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def register(commands: Any, bench: Any) -> None:
    cluster = commands.add_parser(
        "cluster", help="many engine instances behind one OpenAI router (local processes or Ray)",
        description="A cluster of engine instances: routing policies, prefill/decode disaggregation, KV transfer.",
    )
    verbs = cluster.add_subparsers(dest="cluster_command", metavar="<verb>")
    verbs.required = True
    serve = verbs.add_parser(
        "serve", help="start N instances and the OpenAI-compatible router in front of them",
        description="Start engine instances (local processes, or Ray actors with --backend ray) and serve the "
        "OpenAI API over them: the router picks an instance per request by --policy and streams its answer "
        "through. Instances come from --instances/--prefill/--decode (all running the engine options below) "
        "or from a TOML file (--config; see docs/cluster.md).",
    )
    shape = serve.add_argument_group("instances")
    shape.add_argument("--instances", type=count_arg, default=None,
                       help="mixed instances (prefill and decode both); default 2 unless --prefill/--decode/--config")
    shape.add_argument("--prefill", type=count_arg, default=0, help="prefill-only instances (P/D)")
    shape.add_argument("--decode", type=count_arg, default=0, help="decode-only instances (P/D)")
    shape.add_argument("--pool", default="default", help="pool name of the instances given by flags")
    shape.add_argument("--config", help="TOML file of instances (and [router] settings); replaces the counts above")
    shape.add_argument("--backend", choices=["local", "ray"], default="local",
                       help="where instances run: processes of this machine, or actors of a Ray cluster")
    shape.add_argument("--address", default=None,
                       help="Ray cluster to join (auto: the one `ray start` runs here); default: start a local one")
    shape.add_argument("--start-timeout", type=positive_arg, default=300.0,
                       help="seconds an instance may take to come up before the command gives up")
    routing = serve.add_argument_group("routing")
    routing.add_argument("--policy", default=None,
                         help="routing policy: round-robin, least-outstanding, prefix-aware or pd (default: pd with "
                         "prefill/decode instances, else round-robin)")
    routing.add_argument("--policy-option", type=policy_option, action="append", default=[], metavar="KEY=VALUE",
                         help="an option of the policy, e.g. decode=round-robin for pd (repeatable)")
    routing.add_argument("--connector", default=None,
                         help="KV transfer of P/D hand-overs: zmq or ray (default: ray on --backend ray, else zmq)")
    batches = serve.add_argument_group("OpenAI Batch API (offline jobs, run as flex work)")
    batches.add_argument("--batch-dir", default=None,
                         help="directory of uploaded files and batches (enables /v1/files and /v1/batches; a "
                         "restarted router resumes the unfinished batches found there)")
    batches.add_argument("--batch-concurrency", type=int, default=32,
                         help="requests of one batch in flight at once")
    http = serve.add_argument_group("server")
    http.add_argument("--host", default="127.0.0.1")
    http.add_argument("--port", type=int, default=8000, help="0 picks a free one (printed at start)")
    http.add_argument("--served-model-name", help="model id clients use (default: the engine's name)")
    http.add_argument("--max-waiting", type=int, default=256,
                      help="refuse new requests with 503 + Retry-After while this many wait for a first token")
    http.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024, help="larger request bodies get 413")
    http.add_argument("--graceful-timeout", type=float, default=30.0,
                      help="on SIGTERM, seconds to let in-flight requests finish")
    http.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_engine_options(serve)
    serve.set_defaults(handler=_serve, threads=1)


def _serve(args: argparse.Namespace) -> int:
    from edgecloud.cluster.config import ClusterConfigError, instances_from_flags, instances_from_toml
    from edgecloud.cluster.main import ClusterSettings, serve_cluster
    from edgecloud.llm import InvalidRequestError
    from edgecloud.server.app import ServerSettings

    try:
        base = engine_config_from_args(args)
    except InvalidRequestError as error:
        raise CLIError(f"--{(error.param or 'option').replace('_', '-')}: {error}", USAGE) from None
    cluster = ClusterSettings(
        backend=args.backend, ray_address=args.address, policy=args.policy or "",
        policy_options=dict(args.policy_option), connector=args.connector, start_timeout_s=args.start_timeout,
        batch_dir=args.batch_dir, batch_concurrency=args.batch_concurrency,
    )
    try:
        if args.config:
            if args.instances is not None or args.prefill or args.decode:
                raise ClusterConfigError("--config describes the instances: leave out --instances/--prefill/--decode")
            specs, router = instances_from_toml(args.config, base)
            cluster = cluster.merged(router)
        else:
            mixed = args.instances if args.instances is not None else (0 if args.prefill or args.decode else 2)
            specs = instances_from_flags(base, mixed, args.prefill, args.decode, args.pool)
    except ClusterConfigError as error:
        raise CLIError(str(error), USAGE) from None
    if not cluster.policy:
        cluster.policy = "pd" if any(s.role != "mixed" for s in specs) else "round-robin"
    settings = ServerSettings(
        host=args.host, port=args.port, served_model_name=args.served_model_name, max_waiting=args.max_waiting,
        max_body_bytes=args.max_body_bytes, graceful_timeout_s=args.graceful_timeout, log_level=args.log_level,
    )
    return serve_cluster(specs, cluster, settings)
