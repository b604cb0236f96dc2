"""Scripted virtual links for sans-I/O tests, in the style of aioquic's tests/test_connection.py.

:class:`QuicPair` is :class:`~edgecloud.stream.virtual.VirtualPair` with a fixed one-way
delay and drop rules: for the server's datagrams the rule sees the stream frames the server
registered for each (so a test can drop "the first transmission of byte X" or "its first
retransmission"). Deterministic: no sockets, no wall clock.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edgecloud.stream.controller import AutoRecConfig
from edgecloud.stream.meter import SentFrame
from edgecloud.stream.virtual import VirtualPair


class QuicPair(VirtualPair):
    def __init__(self, autorec: AutoRecConfig | None, one_way_s: float = 0.025) -> None:
        self.one_way_s = one_way_s
        # (index of the server datagram, the stream frames it carries) -> drop it?
        self.drop_server: Callable[[int, list[SentFrame]], bool] = lambda index, frames: False
        self.drop_client: Callable[[int], bool] = lambda index: False
        self.server_datagrams = 0
        self.client_datagrams = 0
        self.dropped: list[int] = []
        super().__init__(autorec, downlink=self._downlink, uplink=self._uplink)

    def _downlink(self, now: float, data: bytes, frames: list[SentFrame]) -> float | None:
        index = self.server_datagrams
        self.server_datagrams += 1
        if self.server._handshake_confirmed and self.drop_server(index, frames):
            self.dropped.append(index)
            return None
        return now + self.one_way_s

    def _uplink(self, now: float, data: bytes, frames: list[SentFrame]) -> float | None:
        index = self.client_datagrams
        self.client_datagrams += 1
        return None if self.drop_client(index) else now + self.one_way_s


@pytest.fixture
def quic_pair() -> Callable[..., QuicPair]:
    def make(**kwargs: object) -> QuicPair:
        pair = QuicPair(**kwargs)  # type: ignore[arg-type]
        pair.handshake()
        return pair

    return make
