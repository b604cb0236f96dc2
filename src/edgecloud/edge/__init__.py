"""DisCEdge (arXiv 2511.22599): conversation context kept as token sequences on edge nodes and
replicated between them, with read-your-writes and monotonic reads for roaming clients.

See docs/edge.md. Names are imported on first use, so ``edgecloud --help`` does not load the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecloud.lazy_exports import lazy_getattr

_EXPORTS = {
    "ContextStore": "edgecloud.edge.store",
    "ReplicaCore": "edgecloud.edge.replication",
    "ReplicationSettings": "edgecloud.edge.replication",
    "SessionChecker": "edgecloud.edge.checker",
    "SessionLog": "edgecloud.edge.log",
    "Turn": "edgecloud.edge.turns",
    "format_version": "edgecloud.edge.turns",
    "parse_version": "edgecloud.edge.turns",
}

__all__ = [
    "ContextStore",
    "ReplicaCore",
    "ReplicationSettings",
    "SessionChecker",
    "SessionLog",
    "Turn",
    "format_version",
    "parse_version",
]

if TYPE_CHECKING:
    from edgecloud.edge.checker import SessionChecker
    from edgecloud.edge.log import SessionLog
    from edgecloud.edge.replication import ReplicaCore, ReplicationSettings
    from edgecloud.edge.store import ContextStore
    from edgecloud.edge.turns import Turn, format_version, parse_version

__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)
