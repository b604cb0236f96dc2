"""``edgecloud edge {node,pki,check,bench}``: DisCEdge edge nodes, their certificates, the consistency
check on a virtual clock, and the three-mode benchmark on an emulated geo-distributed edge."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgecloud.errors import USAGE, CLIError, output_file


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (port 0-65535), got {text!r}")
    return host, int(port)


def _peers(text: str) -> dict[str, tuple[str, int]]:
    peers: dict[str, tuple[str, int]] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, address = item.partition("=")
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"expected NAME=HOST:PORT[,NAME=HOST:PORT...], got {item!r}")
        if name in peers:
            raise argparse.ArgumentTypeError(f"peer {name!r} is given twice")
        peers[name] = _address(address)
    return peers


def _quorum(text: str) -> int | str:
    if text == "majority":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected 'majority' or a number of nodes >= 1, got {text!r}")
    return int(text)


def _replicas(text: str) -> int | None:
    if text == "all":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected 'all' or a number of peers >= 0, got {text!r}")
    return int(text)


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def register(commands: Any, bench: Any) -> None:
    from edgecloud.llm.cli import add_engine_options

    edge = commands.add_parser(
        "edge", help="DisCEdge: conversation context kept as tokens and replicated across edge nodes",
        description="DisCEdge (arXiv 2511.22599): edge nodes that keep each session's context as token ids, "
        "replicate it to their peers over mutual TLS, and give roaming clients read-your-writes and monotonic reads.",
    )
    verbs = edge.add_subparsers(dest="edge", metavar="<verb>")
    verbs.required = True

    node = verbs.add_parser(
        "node", help="run one edge node: engine, OpenAI server, context store, replication",
        description="An edge node. A chat request naming a session (X-Session-Id header or 'session' body field; "
        "'new' for a fresh one) sends only its new message; the answer carries X-Session-Id and X-Session-Version, "
        "which the client sends back (X-Session-Version header or 'session_version' field) wherever it goes next.",
    )
    node.add_argument("--name", required=True, help="this node's name: its certificate's name in the PKI")
    node.add_argument("--mode", default="tokens", choices=["tokens", "text", "client"],
                      help="tokens: DisCEdge; text: replicate text, re-tokenize every turn; client: keep nothing")
    node.add_argument("--listen", type=_address, default=("127.0.0.1", 8000), metavar="HOST:PORT",
                      help="the OpenAI API (clients)")
    node.add_argument("--replicate", type=_address, default=None, metavar="HOST:PORT",
                      help="where peers connect (mutual TLS); needed in tokens and text modes")
    node.add_argument("--peers", type=_peers, default={}, metavar="NAME=HOST:PORT,...",
                      help="the other nodes and their --replicate addresses")
    node.add_argument("--pki", type=Path, default=None,
                      help="PKI directory (edgecloud edge pki or c2 pki) with ca.crt, crl.pem, NAME.crt, NAME.key")
    node.add_argument("--store", type=Path, default=None, help="SQLite context store (default: edge-NAME.sqlite)")
    node.add_argument("--store-sync", default="full", choices=["full", "normal"],
                      help="SQLite synchronous: full survives power loss, normal only process crashes")
    node.add_argument("--write-quorum", type=_quorum, default="majority",
                      help="nodes, this one included, that hold a turn before it is acknowledged")
    node.add_argument("--replicas", type=_replicas, default=None, metavar="all|K",
                      help="peers each turn is pushed to: all, or the K nearest by round-trip time (default: all)")
    node.add_argument("--read-timeout", type=_positive, default=2.0,
                      help="seconds a request waits for the client's version before 503 session_behind")
    node.add_argument("--commit-timeout", type=_positive, default=5.0,
                      help="seconds a turn waits for its write quorum before 503 not_replicated")
    node.add_argument("--engine-core", default="process", choices=["process", "thread"])
    node.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add_engine_options(node)
    node.set_defaults(handler=_node)

    pki = verbs.add_parser(
        "pki", help="a CA and node certificates for an edge (edgecloud c2 pki's identity plane)",
        description="Create DIR's root CA if missing and issue a certificate for each node name (role uxv, no C2 "
        "privileges). Revoke one with `edgecloud c2 pki revoke DIR NAME`; nodes reread crl.pem within seconds.",
    )
    pki.add_argument("directory", type=Path)
    pki.add_argument("--names", required=True, help="node names, comma-separated")
    pki.add_argument("--force", action="store_true", help="replace existing node certificates")
    pki.set_defaults(handler=_pki)

    check = verbs.add_parser(
        "check", help="session guarantees over random roaming schedules on a virtual clock",
        description="Runs random schedules (roaming clients, two writers on one session, per-link delays that "
        "reorder messages, node crashes) against the real replication core on a virtual clock and checks every "
        "read: read-your-writes, monotonic reads, no acknowledged turn lost, one order everywhere.",
    )
    check.add_argument("--schedules", type=int, default=200)
    check.add_argument("--nodes", type=int, default=3)
    check.add_argument("--clients", type=int, default=4)
    check.add_argument("--ops", type=int, default=8, help="operations per client")
    check.add_argument("--crashes", type=int, default=1, help="node crashes per schedule")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--json", type=output_file, default=None)
    check.set_defaults(handler=_check)

    from edgecloud.edge.bench import add_bench_options

    run = verbs.add_parser(
        "bench", help="tokens vs text vs client modes on an emulated 3-node edge (JSON + plot)",
        description="Multi-turn conversations (Mooncake conversation trace, a synthetic roaming workload) against "
        "the three modes on the same emulated topology and model: response time, sync bytes per turn, client "
        "request size, prefix-cache hit rate, stale reads, lost turns.",
    )
    add_bench_options(run)
    run.set_defaults(handler=_bench)

    prepare = verbs.add_parser(
        "prepare", help="a turn's prompt built as text (whole re-render) vs as tokens, at the trace's lengths",
        description="Builds every turn's prompt of the Mooncake trace's conversations both ways, without the engine: "
        "text renders the whole conversation with the chat template and tokenizes it (what a text node does every "
        "turn), tokens appends the new message's tokens to the stored ones; times both and compares the prompts.",
    )
    prepare.add_argument("--json", type=output_file, required=True)
    prepare.add_argument("--model", default=None, help="whose tokenizer and template (default: SmolLM2-135M-Instruct)")
    prepare.add_argument("--chat-template", default=None, help="for a model without one (the demo model)")
    prepare.add_argument("--trace", default="../shared/traces/mooncake_conversation.jsonl")
    prepare.add_argument("--conversations", type=int, default=50, help="the trace's first conversations of 2+ turns")
    prepare.add_argument("--trace-scale", type=float, default=1.0, help="every length x this (1: the trace's own)")
    prepare.add_argument("--repeat", type=int, default=3, help="timings per prompt (the median is kept)")
    prepare.add_argument("--seed", type=int, default=0)
    prepare.set_defaults(handler=_prepare)


def _node(args: argparse.Namespace) -> int:
    from edgecloud.edge.node import NodeConfig, serve_node
    from edgecloud.edge.replication import ReplicationSettings, majority
    from edgecloud.llm import InvalidRequestError
    from edgecloud.llm.cli import engine_config_from_args

    if args.mode != "client":
        if args.replicate is None:
            raise CLIError(f"--replicate HOST:PORT is needed in {args.mode} mode (where peers connect)", USAGE)
        if args.pki is None:
            raise CLIError(f"--pki DIR is needed in {args.mode} mode (the certificates of mutual TLS)", USAGE)
        for name in ("ca.crt", "crl.pem", f"{args.name}.crt", f"{args.name}.key"):
            if not (args.pki / name).exists():
                raise CLIError(f"--pki {args.pki}: no {name} (make them with `edgecloud edge pki {args.pki} "
                               f"--names {args.name},...`)", USAGE)
    nodes = 1 + len(args.peers)
    quorum = majority(nodes) if args.write_quorum == "majority" else args.write_quorum
    try:
        settings = ReplicationSettings(write_quorum=quorum, replicas=args.replicas,
                                       read_timeout_s=args.read_timeout, commit_timeout_s=args.commit_timeout)
        config = NodeConfig(
            name=args.name, pki=args.pki or Path("."), peers=args.peers, mode=args.mode, store=args.store,
            http=args.listen, replication=args.replicate or ("127.0.0.1", 0), settings=settings,
            store_synchronous=args.store_sync.upper(),
        )
        engine = engine_config_from_args(args)
    except (ValueError, InvalidRequestError) as error:
        raise CLIError(str(error).replace("write_quorum", "--write-quorum").replace("replicas", "--replicas"),
                       USAGE) from error
    return serve_node(config, engine, engine_core=args.engine_core, log_level=args.log_level)


def _pki(args: argparse.Namespace) -> int:
    from edgecloud.c2 import pki
    from edgecloud.c2.privileges import Role
    from edgecloud.edge.turns import check_name

    names = [n.strip() for n in args.names.split(",") if n.strip()]
    try:
        for name in names:
            check_name(name)
        if not names:
            raise ValueError("--names: give at least one node name")
        directory: Path = args.directory
        if not (directory / "ca.key").exists():
            directory.mkdir(parents=True, exist_ok=True)
            pki.init(directory, common_name="edgecloud edge root")
            print(f"created the root CA in {directory}")
        for name in names:
            pki.issue_to_directory(directory, name, Role.UXV, frozenset(), overwrite=args.force)
            print(f"issued {directory / (name + '.crt')}")
    except (ValueError, pki.PkiError) as error:
        raise CLIError(str(error), USAGE) from error
    return 0


def _check(args: argparse.Namespace) -> int:
    import json
    import random

    from edgecloud.edge.virtual import random_scenario, run_scenario

    if args.nodes < 2 or args.schedules < 1 or args.clients < 1 or args.ops < 1 or args.crashes < 0:
        raise CLIError("--nodes must be >= 2, --schedules, --clients and --ops >= 1, --crashes >= 0", USAGE)
    rng = random.Random(args.seed)
    totals: dict[str, int] = {}
    acked = reads = conflicts = 0
    for _ in range(args.schedules):
        scenario = random_scenario(rng, nodes=args.nodes, clients=args.clients, ops=args.ops, crashes=args.crashes)
        outcome = run_scenario(scenario)
        acked += outcome.acked
        reads += outcome.checker.reads
        conflicts += outcome.conflicts
        for violation in outcome.checker.violations:
            totals[violation.kind] = totals.get(violation.kind, 0) + 1
    kinds = ("read_your_writes", "monotonic_reads", "lost_turn", "divergence")
    report = {"schedules": args.schedules, "nodes": args.nodes, "clients": args.clients, "ops": args.ops,
              "crashes": args.crashes, "seed": args.seed, "reads": reads, "acknowledged_turns": acked,
              "conflicts_reported": conflicts, "violations": {k: totals.get(k, 0) for k in kinds}}
    print(f"edge check: {args.schedules} schedules, {reads} reads, {acked} acknowledged turns, {conflicts} concurrent "
          f"writes reported; violations: " + ", ".join(f"{k} {totals.get(k, 0)}" for k in kinds))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 1 if totals else 0


def _prepare(args: argparse.Namespace) -> int:
    from edgecloud.edge.bench import run_prepare_cli

    return run_prepare_cli(args)


def _bench(args: argparse.Namespace) -> int:
    from edgecloud.edge.bench import run_bench_cli

    return run_bench_cli(args)
