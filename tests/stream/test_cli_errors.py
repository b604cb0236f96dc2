"""``edgecloud stream``'s expected failures: one line and an exit code, promptly; settings as
readable lines."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import pytest

from edgecloud.cli import main
from edgecloud.stream.controller import AutoRecConfig
from edgecloud.stream.player import play


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_play_refuses_an_http_url(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["stream", "play", "http://127.0.0.1:4433/live?seconds=1"])
    assert exit_info.value.code == 2
    assert (
        "edgecloud stream play: error: argument url: url must be https://HOST:PORT/live?seconds=N (HTTP/3 runs "
        "over QUIC, always with TLS), got 'http://127.0.0.1:4433/live?seconds=1'"
    ) in capsys.readouterr().err


# real_clock: failing promptly is the point (it took aioquic's 61 s idle timeout); the bound is 30 s
# for a 1 s connect timeout, so only a machine stalled for half a minute fails it
@pytest.mark.real_clock
def test_play_where_nothing_listens_fails_promptly_in_one_line() -> None:
    port = free_udp_port()

    async def run() -> tuple[int | None, str, float]:
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgecloud.cli", "stream", "play", f"https://127.0.0.1:{port}/live?seconds=1",
            "--connect-timeout", "1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert out == b""
        return process.returncode, err.decode(), time.monotonic() - started

    returncode, err, elapsed = asyncio.run(run())
    assert returncode == 1
    assert err == (
        f"edgecloud stream play: error: cannot play https://127.0.0.1:{port}/live?seconds=1: ConnectionError: "
        f"no QUIC handshake with 127.0.0.1:{port} within 1 s; is `edgecloud stream serve` running there (and a "
        "relay, if the URL names one)?\n"
    )  # and no "Future exception was never retrieved"
    assert elapsed < 30  # was 61 s: aioquic's idle timeout


def test_a_handshake_that_fails_is_named_not_an_empty_connection_error() -> None:
    report = asyncio.run(play(f"https://127.0.0.1:{free_udp_port()}/live?seconds=1", connect_timeout_s=0.5))
    assert report.error is not None and report.error.startswith("ConnectionError: no QUIC handshake with 127.0.0.1:")
    assert report.status is None and report.frames == 0


def test_serve_on_a_taken_port_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert main(["stream", "serve", "--port", str(port)]) == 1
    assert capsys.readouterr().err == (
        f"edgecloud stream serve: error: cannot listen on 127.0.0.1:{port}: the address is already in use; stop "
        "what holds it or pass another --port (port 0 picks a free one)\n"
    )


def test_serve_refuses_a_lone_cert_and_an_unreadable_one(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stream", "serve", "--cert", "c.pem"]) == 2
    assert "--cert and --key go together" in capsys.readouterr().err
    assert main(["stream", "serve", "--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k.pem")]) == 2
    assert f"cannot read {tmp_path / 'c.pem'}: No such file or directory" in capsys.readouterr().err


def test_serve_prints_its_settings_as_readable_lines() -> None:
    async def run() -> list[str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgecloud.cli", "stream", "serve", "--port", "0",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        try:
            return [(await asyncio.wait_for(process.stdout.readline(), 30)).decode() for _ in range(4)]
        finally:
            process.terminate()
            await process.wait()

    lines = asyncio.run(run())
    assert lines[0].startswith("serving https://127.0.0.1:") and lines[0].endswith("/live?seconds=N over HTTP/3\n")
    assert lines[1:] == [
        f"  recovery:           AutoRec: {AutoRecConfig().describe()}\n",
        "  congestion control: NewReno (aioquic's default)\n",
        "  source:             0.3 Mbit/s, 30 fps, a keyframe every 30 frames\n",
    ]
    assert "AutoRecConfig(" not in "".join(lines)


def test_autorec_settings_read_as_words() -> None:
    assert AutoRecConfig(overhead_budget=0.025, copy_plan=True, protect_late_data=False).describe() == (
        "copies within 2.5% overhead, recovery target 100 ms, up to 3 copies, late data not copied, "
        "first-copy reserve 3 packets, retransmission before the window reduction on, copy plan on"
    )


def test_pool_errors_are_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stream", "pool", str(tmp_path / "missing.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgecloud stream pool: error: ") and err.count("\n") == 1
