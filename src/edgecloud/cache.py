"""Where edgecloud keeps what it builds once and reuses: converted GGUF models, compiled CPU
kernels, merged adapters. ``$EDGECLOUD_CACHE_DIR`` if set, else ``~/.cache/edgecloud``."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(kind: str) -> Path:
    """The cache folder for ``kind`` (``gguf``, ``kernels``, ``netgpt``); not created here."""
    base = os.environ.get("EDGECLOUD_CACHE_DIR")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "edgecloud") / kind
