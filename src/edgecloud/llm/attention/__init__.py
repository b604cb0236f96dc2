"""Attention backends of the engine: decode backends by name, and the shared prefill path."""

from edgecloud.llm.attention.backend import DecodeAttentionBackend, DecodeBatch
from edgecloud.llm.attention.paged import PagedDecodeAttention
from edgecloud.llm.attention.prefix import PrefixDecodeAttention

DECODE_BACKENDS: dict[str, type[DecodeAttentionBackend]] = {
    PagedDecodeAttention.name: PagedDecodeAttention,
    PrefixDecodeAttention.name: PrefixDecodeAttention,
}


def make_decode_backend(name: str) -> DecodeAttentionBackend:
    try:
        return DECODE_BACKENDS[name]()
    except KeyError:
        raise ValueError(
            f"attention_backend must be one of {sorted(DECODE_BACKENDS)}, got {name!r}"
        ) from None


__all__ = [
    "DECODE_BACKENDS",
    "DecodeAttentionBackend",
    "DecodeBatch",
    "PagedDecodeAttention",
    "PrefixDecodeAttention",
    "make_decode_backend",
]
