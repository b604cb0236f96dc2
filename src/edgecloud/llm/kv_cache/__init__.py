"""The paged KV cache's bookkeeping: stable block keys, block pools, and the manager that gives
requests their blocks per layer group (design: docs/engine-core.md)."""

from edgecloud.llm.kv_cache.block_pool import Block, BlockPool
from edgecloud.llm.kv_cache.keys import BlockKey, block_key, chain_keys, model_fingerprint, root_key
from edgecloud.llm.kv_cache.layer_group import GROUP_KINDS, LayerGroup
from edgecloud.llm.kv_cache.manager import BlockExport, KVCacheManager

__all__ = [
    "GROUP_KINDS",
    "Block",
    "BlockExport",
    "BlockKey",
    "BlockPool",
    "KVCacheManager",
    "LayerGroup",
    "block_key",
    "chain_keys",
    "model_fingerprint",
    "root_key",
]
