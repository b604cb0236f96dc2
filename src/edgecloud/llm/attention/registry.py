"""Decode-attention backends by name: what ``EngineConfig.attention_backend`` selects."""

from edgecloud.llm.attention.backend import DecodeAttentionBackend
from edgecloud.llm.attention.paged import PagedDecodeAttention
from edgecloud.llm.attention.prefix import PrefixDecodeAttention
from edgecloud.llm.errors import InvalidRequestError

DECODE_BACKENDS: dict[str, type[DecodeAttentionBackend]] = {
    PagedDecodeAttention.name: PagedDecodeAttention,
    PrefixDecodeAttention.name: PrefixDecodeAttention,
}


def make_decode_backend(name: str) -> DecodeAttentionBackend:
    try:
        return DECODE_BACKENDS[name]()
    except KeyError:
        raise InvalidRequestError(
            f"attention_backend must be one of {sorted(DECODE_BACKENDS)}, got {name!r}", "attention_backend"
        ) from None
