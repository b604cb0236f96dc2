"""The one error a command raises for an expected failure, and how ``edgecloud`` reports it.

An *expected* failure is one a user causes or can fix: a bad path or URL, a port in use, a
server that does not answer, a refused credential. A command reports it by raising
:class:`CLIError` with one line that names what went wrong and what to do about it; the exit
code says whose fault it is: :data:`USAGE` (2) for input the user can correct on the command
line, :data:`RUNTIME` (1) for the world not cooperating (port taken, peer down, access
refused). ``edgecloud.cli.main`` prints ``edgecloud <command>: error: <message>`` on stderr and
exits with that code; a traceback appears only with ``edgecloud --debug ...``.

How a system uses it, in its ``cli`` module::

    from edgecloud.errors import USAGE, CLIError, listen_failed

    def _serve(args):
        if not args.url.startswith("https://"):
            raise CLIError(f"url must be https://..., got {args.url!r}", USAGE)
        try:
            server = start(args.host, args.port)
        except OSError as exc:
            raise listen_failed(exc, args.host, args.port, "--port") from exc

Library code keeps raising its own exceptions (``ValueError`` naming the field, a system's
``FooError``); the ``cli`` handler translates the ones it expects, where it knows which option
the user should change. Anything else is a bug: ``main`` prints it on one line too, asks for
``--debug`` and a report, and exits 1.
"""

from __future__ import annotations

import argparse
import errno
from pathlib import Path

USAGE = 2
"""Exit code of input the user can correct on the command line (argparse uses it too)."""
RUNTIME = 1
"""Exit code of a failure outside the command line: a port in use, a peer down, a refusal."""


class CLIError(Exception):
    """An expected failure of a command: a one-line ``message`` for the user and the exit code."""

    def __init__(self, message: str, exit_code: int = RUNTIME) -> None:
        if exit_code not in (USAGE, RUNTIME):
            raise ValueError(f"exit_code must be {USAGE} (usage) or {RUNTIME} (runtime), got {exit_code}")
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def listen_failed(exc: OSError, host: str, port: int, option: str) -> CLIError:
    """The error for a server that cannot bind ``host:port`` (given by ``option``): what the
    operating system said, and what to change."""
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return CLIError(
            f"cannot listen on {where}: the address is already in use; stop what holds it or pass another "
            f"{option} (port 0 picks a free one)"
        )
    if exc.errno == errno.EACCES:
        return CLIError(f"cannot listen on {where}: permission denied (ports below 1024 need privileges); "
                        f"pass another {option}")
    if exc.errno == errno.EADDRNOTAVAIL:
        return CLIError(f"cannot listen on {where}: no such local address; pass another {option}")
    return CLIError(f"cannot listen on {where}: {exc.strerror or exc}; check {option}")


def output_file(text: str) -> str:
    """An argparse ``type`` for a file a command will write (``--json``, ``--plot``): its directory
    must exist, so a long benchmark does not fail at its end for a typo in the path."""
    directory = Path(text).expanduser().parent
    if not directory.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text}: no directory {directory} (create it first)")
    return text
