"""The one error path of ``edgecloud``: expected failures are one line with exit code 2 (usage) or
1 (runtime), tracebacks only with ``--debug``; a sub-command's typo shows that sub-command's usage;
``--help`` shows defaults."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from edgecloud.cli import main
from edgecloud.errors import RUNTIME, USAGE, CLIError, listen_failed


def test_an_unknown_option_shows_the_sub_commands_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["stream", "serve", "--prot", "1"])
    assert exit_info.value.code == USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: edgecloud stream serve ")
    assert err.strip().endswith("edgecloud stream serve: error: unrecognized arguments: --prot 1")
    with pytest.raises(SystemExit):
        main(["c2", "pki", "issue", "pki", "--role", "gcs", "--name", "g", "--bogus"])
    assert "usage: edgecloud c2 pki issue " in capsys.readouterr().err


def test_an_expected_failure_is_one_line_and_debug_adds_the_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "no-pki"
    argv = ["c2", "pki", "issue", str(missing), "--role", "gcs", "--name", "g"]
    assert main(argv) == USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("edgecloud c2 pki issue: error: no such file: ")
    assert "Traceback" not in err
    assert main(["--debug", *argv]) == USAGE
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "edgecloud c2 pki issue: error: no such file" in err
    # --debug is taken after the sub-command too
    assert main([*argv, "--debug"]) == USAGE
    assert "Traceback" in capsys.readouterr().err


def test_a_bug_is_one_line_asking_for_debug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgecloud.c2 import pki

    def broken(directory: Path) -> Path:
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(pki, "init", broken)
    assert main(["c2", "pki", "init", str(tmp_path / "p")]) == RUNTIME
    err = capsys.readouterr().err
    assert err == (
        "edgecloud c2 pki init: internal error: ZeroDivisionError: division by zero (a bug: rerun with "
        "`edgecloud --debug ...` for the traceback and please report it)\n"
    )
    with pytest.raises(ZeroDivisionError):
        main(["--debug", "c2", "pki", "init", str(tmp_path / "p")])


def test_cli_error_takes_only_the_two_exit_codes() -> None:
    assert CLIError("x").exit_code == RUNTIME
    assert CLIError("x", USAGE).exit_code == USAGE
    with pytest.raises(ValueError, match=r"exit_code must be 2 \(usage\) or 1 \(runtime\), got 3"):
        CLIError("x", 3)


def test_listen_failures_say_what_to_change() -> None:
    in_use = listen_failed(OSError(errno.EADDRINUSE, "Address in use"), "127.0.0.1", 80, "--port")
    assert in_use.exit_code == RUNTIME
    assert in_use.message == (
        "cannot listen on 127.0.0.1:80: the address is already in use; stop what holds it or pass another "
        "--port (port 0 picks a free one)"
    )
    denied = listen_failed(OSError(errno.EACCES, "Permission denied"), "0.0.0.0", 80, "--listen")
    assert "permission denied" in denied.message and "--listen" in denied.message


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["stream", "serve"], ["(default: 0.3)", "(default: 4433)", "frames per second (default: 30)"]),
        (["stream", "bench"], ["(default: 0.01,0.05,0.1)", "(default: 20,100)"]),
        (["c2", "pki", "issue"], ["validity (default: 365)"]),
        (["c2", "uxv"], ["control lease in seconds (default 3)"]),
        (["c2", "bench"], ["(default: wifi,tactical-radio)", "(default: 200)"]),
        (["netem", "udp"], ["one-way delay in ms (default: 0)", "(default: 262144)"]),
        (["bench", "netem"], ["the configured one-way delay (default: 20)"]),
        (["bench", "serve"], ["(default: http://127.0.0.1:8000)", "random: mean prompt tokens (default: 256)"]),
    ],
)
def test_help_shows_defaults(
    argv: list[str], shown: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "1000")  # one line per option
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in shown:
        assert text in out
    assert "(default: None)" not in out and "(default: False)" not in out


def test_an_os_error_is_the_environment_not_a_bug(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgecloud.c2 import pki

    def denied(directory: Path) -> Path:
        raise PermissionError(errno.EACCES, "Permission denied", str(directory))

    monkeypatch.setattr(pki, "init", denied)
    assert main(["c2", "pki", "init", str(tmp_path / "p")]) == RUNTIME
    assert capsys.readouterr().err == f"edgecloud c2 pki init: error: Permission denied: {tmp_path / 'p'}\n"


def test_an_output_file_in_a_missing_directory_is_refused_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["stream", "bench", "--virtual"], ["c2", "bench"], ["bench", "netem"], ["bench", "serve"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--json", str(tmp_path / "missing" / "out.json")])
        assert exit_info.value.code == USAGE
        assert (
            f"error: argument --json: cannot write {tmp_path / 'missing' / 'out.json'}: no directory "
            f"{tmp_path / 'missing'} (create it first)"
        ) in capsys.readouterr().err
