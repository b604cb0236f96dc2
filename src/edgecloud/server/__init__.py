"""OpenAI-compatible HTTP server over the async engine (FastAPI + uvicorn + prometheus-client).

Names are imported on first use, so ``edgecloud --help`` does not load the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecloud.lazy_exports import lazy_getattr

_EXPORTS = {
    "ChatContext": "edgecloud.server.app",
    "ChatTurn": "edgecloud.server.app",
    "OpenAIServer": "edgecloud.server.app",
    "ServerSettings": "edgecloud.server.app",
    "build_app": "edgecloud.server.app",
    "serve": "edgecloud.server.main",
}

__all__ = [
    "ChatContext",
    "ChatTurn",
    "OpenAIServer",
    "ServerSettings",
    "build_app",
    "serve",
]

if TYPE_CHECKING:
    from edgecloud.server.app import ChatContext, ChatTurn, OpenAIServer, ServerSettings, build_app
    from edgecloud.server.main import serve


__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)
