"""The router's picture of which KV blocks each instance holds, by stable block key.

Block keys (``edgecloud.llm.kv_cache.keys``) are equal on every instance serving the same model,
so the router computes a prompt's keys itself and remembers, per instance, the keys of the prompts
it sent there. Like SGLang's cache-aware router it is an approximation kept without asking the
instances: a key enters when a request is dispatched (its blocks will be cached once it is
prefilled) and the least recently used keys leave when the instance's capacity in blocks is
exceeded, as the engine's own LRU evicts them. A prompt's match is its leading run of keys the
instance holds: the engine's prefix cache reuses a block only when every block before it is
cached too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from edgecloud.llm.kv_cache.keys import BlockKey


class PrefixIndex:
    def __init__(self, capacity_blocks: int) -> None:
        if capacity_blocks < 1:
            raise ValueError(f"capacity_blocks must be >= 1, got {capacity_blocks}")
        self.capacity = capacity_blocks
        self._keys: OrderedDict[BlockKey, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: BlockKey) -> bool:
        return key in self._keys

    def match(self, keys: Sequence[BlockKey]) -> int:
        """How many leading ``keys`` the instance holds (read-only: no recency change)."""
        held = self._keys
        for i, key in enumerate(keys):
            if key not in held:
                return i
        return len(keys)

    def insert(self, keys: Sequence[BlockKey]) -> None:
        """The instance now holds ``keys`` (most recently used); evicts beyond capacity."""
        held = self._keys
        for key in keys:
            if key in held:
                held.move_to_end(key)
            else:
                held[key] = None
        while len(held) > self.capacity:
            held.popitem(last=False)

    def clear(self) -> None:
        """Forget everything (the instance restarted: its cache is empty)."""
        self._keys.clear()
