"""The replication transport's own life cycle, deterministically: ``stop()`` ends every task it
started whenever it comes, and no wait of the glue outlives its bound.

The first test is the mechanism behind the three-node tests' intermittent hang (#23): on Python
3.11, ``asyncio.wait_for`` returns the inner result instead of raising when the task is cancelled
in the few event-loop turns between the inner awaitable finishing and the task resuming
(CPython gh-86296, fixed in 3.12). The transport's timer waited with ``wait_for`` in a
``while True`` loop, so a ``stop()`` that landed in that window (any peer message wakes the timer)
was swallowed and ``stop()`` waited for the timer forever."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgecloud.c2 import tls
from edgecloud.edge.replication import ReplicaCore, ReplicationSettings
from edgecloud.edge.store import ContextStore
from edgecloud.edge.transport import EdgeError, Transport
from edgecloud.edge.turns import draft
from edgecloud.edge.wire import Hello, decode, encode
from tests.edge.cluster import listening_socket, make_pki


def lone_transport(pki_dir: Path, peers: dict[str, tuple[str, int]] | None = None, **options: float) -> Transport:
    peers = peers or {}
    settings = ReplicationSettings(write_quorum=1 + len(peers), read_timeout_s=0.3, commit_timeout_s=0.3)
    core = ReplicaCore("edge-a", list(peers), ContextStore(":memory:"), settings, mode="text")
    return Transport(core, peers, pki_dir, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pki(tmp_path_factory.mktemp("pki"), ["edge-a", "edge-b"])


async def stop_after(transport: Transport, turns: int, within_s: float, what: str) -> None:
    """``transport.stop()`` ``turns`` event-loop turns from now; fails the test if it takes ``within_s``."""
    for _ in range(turns):
        await asyncio.sleep(0)
    try:
        async with asyncio.timeout(within_s):
            await transport.stop()
    except TimeoutError:
        pytest.fail(f"stop() {turns} loop turn(s) {what} did not end within {within_s:g} s")
    assert all(task.done() for task in transport._tasks)


def test_stop_ends_the_timer_in_every_event_loop_turn_after_a_wake_up(pki_dir: Path) -> None:
    async def run() -> None:
        for turns in range(8):  # stop() lands 0..7 loop turns after a peer message woke the timer
            transport = lone_transport(pki_dir)
            await transport.start(listening_socket())
            await asyncio.sleep(0.01)  # the timer is waiting
            transport.handle([])  # what every message from a peer does
            await stop_after(transport, turns, 5, "after a wake-up of the timer")

    asyncio.run(run())


class _Dialled:
    """The writer side of a dialled connection that never answers."""

    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def get_extra_info(self, name: str) -> None:
        return None

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_stop_ends_a_dial_in_every_event_loop_turn_around_its_completion(
    pki_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same window on the dialling side: stop() lands just as a connection to a peer completes.
    The dial must not go on to wait for the peer's hello (``HANDSHAKE_TIMEOUT_S``) or beyond."""

    dialled: list[_Dialled] = []

    async def open_connection(*args: object, **kwargs: object) -> tuple[asyncio.StreamReader, _Dialled]:
        dialled.append(_Dialled())
        return asyncio.StreamReader(), dialled[-1]

    async def run() -> None:
        monkeypatch.setattr(asyncio, "open_connection", open_connection)
        for turns in range(8):
            dialled.clear()
            transport = lone_transport(pki_dir, {"edge-b": ("127.0.0.1", 9)})
            await transport.start(listening_socket())
            await stop_after(transport, turns, 2, "into a dial")
            assert all(d.closed for d in dialled)

    asyncio.run(run())


def test_a_tick_that_raises_leaves_the_timer_ticking_and_a_commit_fails_at_its_deadline(
    pki_dir: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The client's wait for a write quorum ends at the core's deadline, carried by the timer: a tick
    that raises is logged and the timer goes on, so the commit still fails with ``503
    not_replicated`` naming how many nodes held the turn."""

    async def run() -> None:
        transport = lone_transport(pki_dir, {"edge-b": ("127.0.0.1", 9)})  # a peer that is never up
        core = transport.core
        real_tick, calls = core.tick, []

        def tick(now: float) -> list:  # type: ignore[type-arg]
            calls.append(now)
            if len(calls) == 1:
                raise RuntimeError("a bug in one tick")
            return real_tick(now)

        core.tick = tick  # type: ignore[method-assign]
        await transport.start(listening_socket())
        try:
            snapshot = await transport.read("s1", {}, exclusive=True, create=True)
            with pytest.raises(EdgeError) as failed:
                async with asyncio.timeout(5):
                    await transport.commit(snapshot.read_id, draft("text", "A fool", "and his money"))
            assert failed.value.status == 503 and failed.value.code == "not_replicated"
            assert "only 1 of the 2 nodes" in failed.value.message
            assert len(calls) > 1 and "tick failed; ticking on" in caplog.text
        finally:
            await transport.stop()

    asyncio.run(run())


def test_a_peer_that_falls_silent_is_cut_off_within_the_bound(pki_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A peer that says hello and then sends nothing (not even pings: a half-open connection, a
    hung process) is closed after ``silence_s`` with a warning naming it, not waited on forever."""

    async def run() -> None:
        transport = lone_transport(pki_dir, {"edge-b": ("127.0.0.1", 9)}, silence_s=0.5)
        await transport.start(listening_socket())
        try:
            reader, writer = await asyncio.open_connection(
                *transport.address, ssl=tls.client_context(pki_dir, "edge-b"), server_hostname="edge-a")
            writer.write(encode(Hello("edge-b", "text", b"")))
            async with asyncio.timeout(5):
                header = await reader.readexactly(4)
                assert isinstance(decode(await reader.readexactly(int.from_bytes(header, "big"))), Hello)
                assert "edge-b" in transport.incoming
                assert await reader.read() == b""  # closed by the node
            assert "edge-b" not in transport.incoming
            assert "connection from edge-b: no frame (pings go every 2 s both ways) within 0.5 s" in caplog.text
            writer.close()
        finally:
            await transport.stop()

    asyncio.run(run())
