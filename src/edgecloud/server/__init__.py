"""OpenAI-compatible HTTP server over the edgecloud engine (``edgecloud serve``): completions and
chat completions with SSE streaming, models, health, and Prometheus metrics."""

from edgecloud.server.app import OpenAIServer, ServerSettings, build_app
from edgecloud.server.main import serve

__all__ = ["OpenAIServer", "ServerSettings", "build_app", "serve"]
