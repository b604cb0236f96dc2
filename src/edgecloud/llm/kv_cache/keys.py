"""Stable, collision-resistant keys of full KV blocks.

A block's key is ``sha256(parent key ‖ its token ids)``; the chain starts at a root key that hashes
the model's fingerprint, the LoRA adapter and the tenant's cache salt. Keys are equal in every
process and on every machine serving the same model, so instances can compare what they have cached
(cache-aware routing), hand KV over by key, and replicate it. They are 32-byte SHA-256 digests,
not Python's ``hash``: that one reduces integers modulo 2**61 - 1 (so ``hash(1) == hash(2**61)``)
and hashes ``None`` by address, which made the old keys differ per process and collide on demand
(the class of vLLM's CVE-2025-25183).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from pathlib import Path

BlockKey = bytes

_KEY_VERSION = b"edgecloud-kv-v1"


def root_key(model_fingerprint: bytes, adapter_id: str | None = None, cache_salt: str | None = None) -> BlockKey:
    """The parent of a request's first block: distinct per model, adapter and salt."""
    h = hashlib.sha256(_KEY_VERSION)
    h.update(model_fingerprint)
    # length-prefixed, so ("ab", None) and ("a", "b") never meet
    for part in (adapter_id, cache_salt):
        data = b"" if part is None else part.encode()
        h.update(struct.pack("<?I", part is not None, len(data)))
        h.update(data)
    return h.digest()


def block_key(parent: BlockKey, tokens: Sequence[int]) -> BlockKey:
    return hashlib.sha256(parent + struct.pack(f"<{len(tokens)}I", *tokens)).digest()


def chain_keys(
    root: BlockKey, token_ids: Sequence[int], block_size: int, known: Sequence[BlockKey] = (), limit: int | None = None
) -> list[BlockKey]:
    """Keys of the full blocks of ``token_ids`` (at most ``limit``), extending ``known`` (the keys
    of its first blocks, already computed)."""
    keys = list(known)
    num_full = len(token_ids) // block_size
    if limit is not None:
        num_full = min(num_full, limit)
    parent = keys[-1] if keys else root
    for i in range(len(keys), num_full):
        parent = block_key(parent, token_ids[i * block_size : (i + 1) * block_size])
        keys.append(parent)
    return keys


def model_fingerprint(model_dir: Path, kv_dtype: str) -> bytes:
    """Identifies the model whose KV a block holds: its config.json, the names and sizes of its
    weight files, and the KV dtype (fp32 and bf16 KV are not interchangeable). Reading whole
    weight files would cost seconds at start; a changed checkpoint changes its sizes or config."""
    h = hashlib.sha256(_KEY_VERSION)
    config = model_dir / "config.json"
    h.update(config.read_bytes() if config.exists() else b"")
    for path in sorted(model_dir.glob("*.safetensors")):
        h.update(f"{path.name}:{path.stat().st_size};".encode())
    h.update(kv_dtype.encode())
    return h.digest()
