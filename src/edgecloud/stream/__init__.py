"""AutoRec: live streaming over QUIC with server-side loss recovery (arXiv 2511.22046).

The server (:mod:`edgecloud.stream.server`) streams a live source over HTTP/3 on aioquic;
:class:`AutoRecConnection` extends aioquic's connection with the reinjection controller
(:mod:`edgecloud.stream.controller`) and a duplicate-safe stream sender
(:mod:`edgecloud.stream.sender`); the player (:mod:`edgecloud.stream.player`) is plain
aioquic and records each frame's arrival against its deadline.
"""

from edgecloud.stream.connection import AutoRecConnection
from edgecloud.stream.controller import AutoRecConfig, ReinjectionController, copies_for_target
from edgecloud.stream.sender import FrameKind, TrackedStreamSender

__all__ = [
    "AutoRecConfig",
    "AutoRecConnection",
    "FrameKind",
    "ReinjectionController",
    "TrackedStreamSender",
    "copies_for_target",
]
