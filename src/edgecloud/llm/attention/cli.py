"""``edgecloud bench attention``: decode attention, dense vs cascade vs PAT (see ``bench.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    parser = bench.add_parser(
        "attention",
        help="decode attention on PAT's synthetic prefix trees: dense, two-level cascade, PAT",
        description="Times one layer of decode attention, median of --repeats runs, for dense paged "
        "attention, a two-level cascade and the prefix-aware backend (PAT) on the same inputs.",
    )
    parser.add_argument("--trees", nargs="+", metavar="TREE",
                        default=["1,10_4096,416", "1,4,16_2048,512,128", "1,4,16,512_1024,256,128,32"],
                        help="trees as nodes-per-level_len-per-level (default: PAT's three shapes)")
    parser.add_argument("--heads", default="32/32,32/8",
                        help="comma-separated query/kv head counts (default: 32/32,32/8)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (default: 5)")
    parser.add_argument("--block-size", type=int, default=16, help="KV block size in tokens (default: 16)")
    parser.add_argument("--engine-paged", action="store_true",
                        help="also time the engine's paged backend (slow on big trees)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, help="write a PNG bar chart here")
    parser.set_defaults(handler=_bench_attention)


def _bench_attention(args: argparse.Namespace) -> int:
    from edgecloud.bench.machine import LoadWatch
    from edgecloud.bench.report import report_console
    from edgecloud.llm.attention.bench import print_summary, run_attention_bench, write_json, write_plot

    if args.threads < 1:
        raise SystemExit(f"--threads must be >= 1, got {args.threads}")
    watch = LoadWatch.begin()
    try:
        result = run_attention_bench(args.trees, args.heads.split(","), args.threads, args.repeats,
                                     args.block_size, engine_paged=args.engine_paged)
    except ValueError as exc:
        raise SystemExit(f"edgecloud bench attention: {exc}") from None
    print_summary(result, report_console())  # not cut to 80 columns when piped
    result["machine_load"] = watch.finish().as_dict()
    if args.json:
        write_json(result, args.json)
    if args.plot:
        write_plot(result, args.plot)
    return 0
