"""The ``edgecloud`` command: ``edgecloud <system> <verb>``.

This module only parses. Each system owns a small ``cli`` module with a
``register(commands, bench)`` function that adds its sub-commands (``commands``) and its
benchmarks (``bench``, reached as ``edgecloud bench <name>``); the handlers it installs call
library functions and import heavy dependencies lazily, so ``edgecloud --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edgecloud import __version__

# One entry per system that has landed; order is the order of ``--help``.
SYSTEM_CLI_MODULES: tuple[str, ...] = (
    "edgecloud.llm.cli",
    "edgecloud.llm.attention.cli",
    "edgecloud.netem.cli",
    "edgecloud.stream.cli",
    "edgecloud.c2.cli",
    "edgecloud.server.cli",
    "edgecloud.bench.cli",
    "edgecloud.splitlearn.cli",
    "edgecloud.wireless.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecloud",
        description="edgecloud: LLM serving across cloud and edge, live streaming, "
        "UxV command and control, and split learning.",
    )
    parser.add_argument("--version", action="version", version=f"edgecloud {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="<command>")
    commands.required = True
    bench_parser = commands.add_parser(
        "bench", help="benchmarks: each runs a baseline and our system side by side"
    )
    bench = bench_parser.add_subparsers(dest="bench", metavar="<benchmark>")
    bench.required = True
    for name in SYSTEM_CLI_MODULES:
        importlib.import_module(name).register(commands, bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
