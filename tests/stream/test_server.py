"""The live server over real loopback sockets and real QUIC: aioquic's client, ngtcp2's
independent client, and hostile input (garbage, bad requests, vanishing and many viewers)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import shutil
import signal
import socket
import sys
from urllib.parse import urlsplit

import pytest
from aioquic.asyncio.client import connect
from aioquic.h3.connection import H3_ALPN
from aioquic.h3.events import DataReceived
from aioquic.quic.configuration import QuicConfiguration

from edgecloud.netem import LinkProfile, UdpRelay
from edgecloud.stream.controller import AutoRecConfig
from edgecloud.stream.player import PlayerProtocol, play
from edgecloud.stream.server import StreamServer
from edgecloud.stream.source import LiveSource, SourceConfig

SMALL = SourceConfig(fps=20, bitrate_mbps=0.2, gop=10)
TINY = SourceConfig(fps=10, bitrate_mbps=0.04, gop=10)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def started(**kwargs) -> StreamServer:
    server = StreamServer(**kwargs)
    await server.start()
    return server


async def until(condition, timeout_s: float = 30.0, what: str = "condition") -> None:
    """Wait for ``condition`` on the event loop: generous, never a timing assertion."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("autorec", [None, AutoRecConfig()], ids=["baseline", "autorec"])
def test_aioquic_player_receives_every_byte(autorec):
    async def main():
        server = await started(autorec=autorec, source=LiveSource(SMALL))
        host, port = server.address
        report = await play(f"https://{host}:{port}/live?seconds=1.5", timeout_s=20)
        await server.close()
        return server, report

    server, report = asyncio.run(main())
    expected = sha256(LiveSource(SMALL).body(1.5))
    assert report.error is None and report.status == 200 and report.ended
    assert report.frames == 30
    assert report.sha256 == expected == server.requests[0].sha256
    assert server.requests[0].completed


def test_the_server_runs_the_congestion_control_it_is_given():
    async def main():
        server = await started(autorec=AutoRecConfig(), source=LiveSource(SMALL), congestion_control="cubic")
        host, port = server.address
        report = await play(f"https://{host}:{port}/live?seconds=1", timeout_s=20)
        cc = type(server.connections[-1].connection._loss._cc).__name__
        await server.close()
        return server, report, cc

    server, report, cc = asyncio.run(main())
    assert server.configuration.congestion_control_algorithm == "cubic" and cc == "CubicCongestionControl"
    assert report.ended and report.sha256 == sha256(LiveSource(SMALL).body(1.0))
    assert StreamServer().configuration.congestion_control_algorithm == "reno"  # aioquic's default
    with pytest.raises(ValueError, match="congestion_control must be one of reno, cubic"):
        StreamServer(congestion_control="bbr")


@pytest.mark.skipif(shutil.which("gtlsclient") is None, reason="ngtcp2-client (Debian) is not installed")
def test_independent_ngtcp2_client_receives_every_byte(tmp_path):
    async def main():
        server = await started(autorec=AutoRecConfig(), source=LiveSource(SMALL))
        host, port = server.address
        process = await asyncio.create_subprocess_exec(
            "gtlsclient",
            "--quiet",
            "--exit-on-all-streams-close",
            f"--download={tmp_path}",
            host,
            str(port),
            f"https://{host}:{port}/live?seconds=1.5",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
        await server.close()
        return server, process.returncode, stderr

    server, returncode, stderr = asyncio.run(main())
    assert returncode == 0, stderr.decode(errors="replace")[-2000:]
    (received,) = [p.read_bytes() for p in tmp_path.iterdir()]
    assert sha256(received) == sha256(LiveSource(SMALL).body(1.5)) == server.requests[0].sha256


class BodyKeeper(PlayerProtocol):
    """The player, also keeping the response body (error texts are small)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.body = bytearray()

    def _h3_event_received(self, event) -> None:
        if isinstance(event, DataReceived):
            self.body += event.data
        super()._h3_event_received(event)


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/nope", 404, "unknown path '/nope'; try /live?seconds=N\n"),
        ("/live", 400, "query parameter 'seconds' is required, in (0, 86400]\n"),
        ("/live?seconds=0", 400, "seconds must be in (0, 86400], got 0\n"),
        ("/live?seconds=abc", 400, "seconds must be a number in (0, 86400], got 'abc'\n"),
    ],
)
def test_bad_requests_get_precise_errors(path, status, message):
    async def main():
        server = await started(source=LiveSource(TINY))
        host, port = server.address
        config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=0)
        async with connect(host, port, configuration=config, create_protocol=BodyKeeper) as client:
            client.get(f"{host}:{port}", path)
            await asyncio.wait_for(client.done, 10)
        await server.close()
        return server, client

    server, client = asyncio.run(main())
    assert (client.status, client.body.decode()) == (status, message)
    assert server.requests[0].status == status


def test_garbage_datagrams_and_a_vanishing_viewer_leave_other_viewers_streaming():
    async def main():
        server = await started(source=LiveSource(SMALL), autorec=AutoRecConfig(), idle_timeout_s=1.0)
        host, port = server.address
        url = f"https://{host}:{port}/live?seconds=2.5"
        good = asyncio.create_task(play(url, timeout_s=30))

        # A viewer that starts streaming and then disappears without closing.
        config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=0)
        async with connect(host, port, configuration=config, create_protocol=PlayerProtocol) as ghost:
            ghost.get(f"{host}:{port}", "/live?seconds=2.5")
            await until(lambda: ghost.bytes > 0, what="the ghost to start streaming")
            ghost._transport.close()  # the socket is gone: no CONNECTION_CLOSE is ever sent

        # Garbage: random bytes, a long-header packet with a bogus version, short headers.
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rng = random.Random(7)
        for size in (1, 5, 20, 1200, 1500):
            sock.sendto(rng.randbytes(size), (host, port))
        sock.sendto(b"\xc0\x0a\x0a\x0a\x0a" + rng.randbytes(1300), (host, port))
        sock.sendto(b"\xc0\x00\x00\x00\x01\x08" + rng.randbytes(1300), (host, port))
        for _ in range(50):
            sock.sendto(b"\x40" + rng.randbytes(60), (host, port))
        sock.close()

        report = await good

        def ghosts():
            return [c for c in server.connections if c.requests and not c.requests[0].completed]

        # the vanished viewer's connection closes once idle (1 s), whenever the loop gets to it
        await until(lambda: [c.closed for c in ghosts()] == [True], what="the vanished viewer's idle timeout")
        await server.close()
        return server, report

    server, report = asyncio.run(main())
    assert report.error is None and report.ended
    assert report.sha256 == sha256(LiveSource(SMALL).body(2.5))
    ghost = [c for c in server.connections if c.requests and not c.requests[0].completed]
    assert len(ghost) == 1 and ghost[0].closed
    assert ghost[0].requests[0].error == "viewer went away"


def test_fifty_concurrent_viewers_all_get_every_byte():
    async def main():
        server = await started(source=LiveSource(TINY), autorec=AutoRecConfig())
        host, port = server.address
        reports = await asyncio.gather(
            *(play(f"https://{host}:{port}/live?seconds=2", timeout_s=60) for _ in range(50))
        )
        await server.close()
        return server, reports

    server, reports = asyncio.run(main())
    expected = sha256(LiveSource(TINY).body(2))
    assert [r.error for r in reports] == [None] * 50
    assert {r.sha256 for r in reports} == {expected}
    assert len(server.requests) == 50 and all(r.completed for r in server.requests)


def test_serve_refuses_a_half_given_certificate(capsys):
    from edgecloud.cli import main

    assert main(["stream", "serve", "--cert", os.devnull]) == 2
    assert "--cert and --key go together" in capsys.readouterr().err


def test_adopt_refuses_a_connection_that_already_ran():
    from aioquic.quic.connection import QuicConnection

    from edgecloud.stream.connection import AutoRecConnection

    client = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN))
    client.connect(("127.0.0.1", 4433), now=0.0)
    with pytest.raises(ValueError, match="has not processed any datagram"):
        AutoRecConnection.adopt(client, None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--loss", "0.7"], "must be in [0, 0.5], got 0.7"),
        (["--loss-model", "gauss"], "loss model must be one of bernoulli, bursty, bursty-time, got 'gauss'"),
        (["--duration", "0"], "must be in [1, 3600], got 0"),
        (["--overhead-budget", "x"], "expected a number, got 'x'"),
        (["--first-copy-reserve", "65"], "must be in [0, 64], got 65"),
    ],
)
def test_bench_options_are_checked(argv, message, capsys):
    from edgecloud.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["stream", "bench", "--json", "out.json", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_passes_autorec_options_to_the_controller():
    from edgecloud.cli import build_parser
    from edgecloud.stream.cli import _autorec_config

    args = build_parser().parse_args(["stream", "bench", "--json", "o", "--first-copy-reserve", "3", "--copy-plan"])
    config = _autorec_config(args)
    assert (config.first_copy_reserve, config.copy_plan) == (3, True)
    assert _autorec_config(build_parser().parse_args(["stream", "bench", "--json", "o"])) == AutoRecConfig()


# real_clock: the player's stall accounting on a real link cut mid-stream; bounds from the measured
# session length, never a tolerance (the arithmetic is checked on a virtual clock in test_source_player.py)
@pytest.mark.real_clock
@pytest.mark.parametrize("knows_the_stream", [False, True])
def test_a_stream_cut_short_counts_its_frozen_rest_as_stall(knows_the_stream):
    # The link goes dead 1 s into a 5 s stream (the relay between server and player
    # stops); the player gives up at 2.5 s. It counts as a stall the time from the next
    # frame's due time to then, or, when it knows the stream's frames (as the benchmark
    # does), at least to when the last one would have played.
    expected_pts = [f.pts_s for f in LiveSource(SMALL).frames(5)] if knows_the_stream else None

    async def main():
        server = await started(source=LiveSource(SMALL))
        relay = UdpRelay(target=server.address, uplink=LinkProfile(delay_ms=1), downlink=LinkProfile(delay_ms=1))
        await relay.start()
        host, port = relay.address
        url = f"https://{host}:{port}/live?seconds=5"
        loop = asyncio.get_running_loop()
        began = loop.time()
        task = asyncio.ensure_future(play(url, timeout_s=2.5, expected_pts=expected_pts))
        await asyncio.sleep(1.0)
        await relay.stop()
        report = await task
        session_s = loop.time() - began
        await server.close()
        return report, session_s

    report, session_s = asyncio.run(main())
    assert not report.ended and report.error is not None
    assert 0 < report.frames < 100
    # Bounds that hold however late this machine runs the steps (the arithmetic itself is
    # checked on a virtual clock in test_source_player.py): the stream froze when its next
    # frame fell due, at least the playout delay into the session, and stayed frozen until the
    # player gave up or, when it knows the stream, at least until the last frame (presented at
    # 4.95 s) would have played.
    frozen_in_session_s = session_s - 0.3
    if knows_the_stream:
        missing_s = 4.95 - report.frames / SMALL.fps  # the next frame's presentation to the last's
        assert missing_s - 1e-9 <= report.unfinished_stall_s <= max(frozen_in_session_s, missing_s) + 1e-9
    else:
        assert 0 < report.unfinished_stall_s <= frozen_in_session_s
    assert report.stall_s >= report.unfinished_stall_s and report.stalls >= 1


@pytest.mark.parametrize(
    ("signum", "sigint_ignored"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
    ids=["sigterm", "ctrl-c", "ctrl-c-background"],
)
def test_serve_stops_cleanly_on_a_signal_while_streaming(signum, sigint_ignored):
    # `edgecloud stream serve` with a viewer mid-stream: SIGTERM or Ctrl-C closes the
    # viewer's connection and exits 0, also when started the way a non-interactive shell
    # starts `cmd &` (SIGINT ignored).
    def ignore_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def main():
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "edgecloud.cli",
            "stream",
            "serve",
            "--port",
            "0",
            "--bitrate-mbps",
            "0.1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=ignore_sigint if sigint_ignored else None,
        )
        try:
            line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
            assert line.startswith("serving https://"), line
            address = urlsplit(line.split()[1])
            config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, verify_mode=0)
            async with connect(address.hostname, address.port, configuration=config,
                               create_protocol=PlayerProtocol) as viewer:
                viewer.get(address.netloc, "/live?seconds=20")
                await until(lambda: viewer.bytes > 0, what="the viewer to start streaming")
                process.send_signal(signum)
                out, err = await asyncio.wait_for(process.communicate(), 15)
                with pytest.raises(ConnectionError, match="connection closed"):  # closed mid-stream
                    await asyncio.wait_for(viewer.done, 15)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        return process.returncode, out.decode(), err.decode()

    returncode, out, err = asyncio.run(main())
    assert returncode == 0, err[-2000:]
    assert "stopped: viewers' connections closed" in out


def test_close_stops_every_stream_before_closing_the_connections():
    # A viewer mid-stream when the server closes: its stream task ends with the server (no
    # frame is written into the closed connection) and the viewer sees the connection close.
    async def main():
        server = await started(source=LiveSource(SMALL))
        host, port = server.address
        viewer = asyncio.ensure_future(play(f"https://{host}:{port}/live?seconds=20", timeout_s=30))
        await until(lambda: server.requests and server.requests[0].bytes_sent > 0, what="the stream to start")
        await server.close()
        (request,) = server.requests
        sent = request.bytes_sent
        await asyncio.sleep(0.3)
        return request, sent, await asyncio.wait_for(viewer, 10)

    request, sent, report = asyncio.run(main())
    assert request.error == "server shut down" and not request.completed
    assert request.bytes_sent == sent > 0  # nothing more was written after close()
    assert not report.ended and report.error is not None
