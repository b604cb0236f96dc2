"""The ``edgecloud`` command: ``edgecloud <system> <verb>``.

This module only parses. Each system owns a small ``cli`` module with a
``register(commands, bench)`` function that adds its sub-commands (``commands``) and its
benchmarks (``bench``, reached as ``edgecloud bench <name>``); the handlers it installs call
library functions and import heavy dependencies lazily, so ``edgecloud --help`` stays fast.

Every parser is an :class:`EdgecloudParser`: its ``--help`` shows each option's default, and it
accepts ``--debug`` at any level. Errors take one path (see :mod:`edgecloud.errors`): a handler
raises :class:`~edgecloud.errors.CLIError` for an expected failure, and :func:`main` prints it on
one line with its exit code; an option that the chosen sub-command does not know is reported with
that sub-command's usage, not the top-level one.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from edgecloud import __version__
from edgecloud.errors import RUNTIME, CLIError

# One entry per system that has landed; order is the order of ``--help``.
SYSTEM_CLI_MODULES: tuple[str, ...] = (
    "edgecloud.llm.cli",
    "edgecloud.llm.attention.cli",
    "edgecloud.llm.omniattn.cli",
    "edgecloud.llm.moe.cli",
    "edgecloud.netem.cli",
    "edgecloud.stream.cli",
    "edgecloud.c2.cli",
    "edgecloud.server.cli",
    "edgecloud.bench.cli",
    "edgecloud.splitlearn.cli",
    "edgecloud.wireless.cli",
    "edgecloud.cluster.cli",
    "edgecloud.sim.cli",
    # OOCO (issue #19): `edgecloud batch run` and `edgecloud bench ooco`
    "edgecloud.cluster.batch_cli",
    "edgecloud.sim.ooco_cli",
    "edgecloud.sim.lora_cli",
    "edgecloud.sim.moe_cli",  # OmniInfer (issue #20): `edgecloud bench moe-sim`, SIMULATED expert placement
    "edgecloud.sim.omniproxy_cli",  # OmniProxy (issue #21): `edgecloud bench omniproxy`
    "edgecloud.edge.cli",
    "edgecloud.edge.netgpt.cli",
)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` with each option's default, as argparse's ``ArgumentDefaultsHelpFormatter`` but
    also for options without help text, lists written as typed (``0.01,0.05``), and nothing for
    flags, ``None`` defaults or help that already says its default."""

    def _format_action(self, action: argparse.Action) -> str:
        shown = _shown_default(action)
        if shown is not None:
            action = copy.copy(action)
            action.help = f"{action.help or ''} (default: {shown.replace('%', '%%')})".lstrip()
        return super()._format_action(action)


def _shown_default(action: argparse.Action) -> str | None:
    default = action.default
    if (
        default is None
        or default is argparse.SUPPRESS
        or action.help is argparse.SUPPRESS
        or isinstance(default, bool)
        or isinstance(action, argparse._StoreConstAction | argparse._CountAction)
        or "default" in (action.help or "").lower()
        or not (action.option_strings or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))
    ):
        return None
    if isinstance(default, list | tuple):
        return ",".join(_shown_value(v) for v in default) if default else "none"
    return _shown_value(default)


def _shown_value(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


class EdgecloudParser(argparse.ArgumentParser):
    """An argument parser that shows defaults in ``--help`` and takes ``--debug`` anywhere.

    Sub-parsers made with ``add_subparsers().add_parser`` are of this class too (argparse makes
    them of the parent's class), so every system's options get the same treatment. ``--debug``
    is listed only at the top level; given anywhere, it sets ``args.debug``.
    """

    def __init__(self, *args: Any, top_level: bool = False, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--debug",
            action="store_true",
            default=argparse.SUPPRESS,
            help="on an error, print the traceback too" if top_level else argparse.SUPPRESS,
        )


def chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The deepest sub-parser that ``args`` went through (``edgecloud stream serve``'s for
    ``stream serve --port 1``): the one whose usage fits an error in its arguments."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, sub.dest, None) if sub is not None and sub.dest is not argparse.SUPPRESS else None
        if sub is None or name not in sub.choices:
            return parser
        parser = sub.choices[name]


def build_parser() -> argparse.ArgumentParser:
    parser = EdgecloudParser(
        prog="edgecloud",
        description="edgecloud: LLM serving across cloud and edge, live streaming, "
        "UxV command and control, and split learning.",
        top_level=True,
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
    # argparse hands the arguments a sub-parser does not know back to the top-level parser, which
    # would print its own usage for `serve --prot`; the sub-command's usage is the useful one.
    args, unknown = parser.parse_known_args(argv)
    command = chosen_parser(parser, args)
    if unknown:
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    debug = getattr(args, "debug", False)
    try:
        result = args.handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader of our output went away (`edgecloud ... | head`): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return RUNTIME
    except CLIError as exc:
        if debug:
            traceback.print_exc()
        print(f"{command.prog}: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # the environment, not a bug: a file that cannot be read or written, a socket refused
        if debug:
            raise
        where = f": {exc.filename}" if exc.filename else ""
        print(f"{command.prog}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return RUNTIME
    except Exception as exc:
        if debug:
            raise
        print(
            f"{command.prog}: internal error: {type(exc).__name__}: {exc} "
            "(a bug: rerun with `edgecloud --debug ...` for the traceback and please report it)",
            file=sys.stderr,
        )
        return RUNTIME
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
