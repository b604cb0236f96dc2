"""OpenAI-compatible HTTP server over the async engine (FastAPI + uvicorn + prometheus-client).

Names are imported on first use, so ``edgecloud --help`` does not load the engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "OpenAIServer": "edgecloud.server.app",
    "ServerSettings": "edgecloud.server.app",
    "build_app": "edgecloud.server.app",
    "serve": "edgecloud.server.main",
}

__all__ = [
    "OpenAIServer",
    "ServerSettings",
    "build_app",
    "serve",
]

if TYPE_CHECKING:
    from edgecloud.server.app import OpenAIServer, ServerSettings, build_app
    from edgecloud.server.main import serve


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edgecloud.server' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
