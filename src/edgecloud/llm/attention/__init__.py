"""Attention backends of the engine: decode backends by name, and the shared prefill path.

Names are imported on first use, so importing a light submodule (the ``bench attention`` CLI
parser) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecloud.lazy_exports import lazy_getattr

_EXPORTS = {
    "DecodeAttentionBackend": "edgecloud.llm.attention.backend",
    "DecodeBatch": "edgecloud.llm.attention.backend",
    "PagedDecodeAttention": "edgecloud.llm.attention.paged",
    "PrefixDecodeAttention": "edgecloud.llm.attention.prefix",
    "DECODE_BACKENDS": "edgecloud.llm.attention.registry",
    "make_decode_backend": "edgecloud.llm.attention.registry",
}

__all__ = [
    "DECODE_BACKENDS",
    "DecodeAttentionBackend",
    "DecodeBatch",
    "PagedDecodeAttention",
    "PrefixDecodeAttention",
    "make_decode_backend",
]

if TYPE_CHECKING:
    from edgecloud.llm.attention.backend import DecodeAttentionBackend, DecodeBatch
    from edgecloud.llm.attention.paged import PagedDecodeAttention
    from edgecloud.llm.attention.prefix import PrefixDecodeAttention
    from edgecloud.llm.attention.registry import DECODE_BACKENDS, make_decode_backend


__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)
