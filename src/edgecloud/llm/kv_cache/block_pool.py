"""One pool of fixed-size KV blocks: reference counts, the free queue, and the key -> block map
of the prefix cache.

A block nobody references stays in the cache until a fresh block is needed. The free queue is
the eviction order: blocks that hold nothing reusable are taken first, then cached ones, least
recently freed first. A free block may also be held for the request that wrote it (``owner``):
the partly filled last block of a preempted request, which that request takes back on resume if
no one has taken it meanwhile.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from edgecloud.llm.kv_cache.keys import BlockKey


@dataclass(slots=True)
class Block:
    block_id: int
    ref_count: int = 0
    key: BlockKey | None = None
    parent: BlockKey | None = None  # the key this block's key was chained from
    tokens: tuple[int, ...] = ()
    owner: str | None = None  # request whose partial tail this free block still holds


class BlockPool:
    def __init__(self, num_blocks: int) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[BlockKey, int] = {}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free(self) -> int:
        return len(self.free)

    def get_cached(self, key: BlockKey) -> int | None:
        return self.cached.get(key)

    def take(self) -> int:
        """A free block for new data, evicting what it held. Raises ``MemoryError`` when none is free."""
        if not self.free:
            raise MemoryError("no free KV block")
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.key is not None:
            del self.cached[block.key]
            block.key, block.parent, block.tokens = None, None, ()
        block.owner = None
        block.ref_count = 1
        return block_id

    def acquire(self, block_id: int) -> None:
        """One more reference to a block (a cache hit, a pin); a free one leaves the free queue."""
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
            block.owner = None
        block.ref_count += 1

    def release(self, block_id: int, owner: str | None = None) -> None:
        """Drops one reference. A block that becomes free goes to the back of the eviction order
        when it holds something reusable (a key, or an owner's partial tail), else to the front."""
        block = self.blocks[block_id]
        assert block.ref_count > 0, f"block {block_id} released more often than acquired"
        block.ref_count -= 1
        if block.ref_count:
            return
        self.free[block_id] = None
        if block.key is None and owner is not None:
            block.owner = owner
        elif block.key is None:
            self.free.move_to_end(block_id, last=False)

    def register(self, block_id: int, key: BlockKey, parent: BlockKey, tokens: tuple[int, ...]) -> bool:
        """Caches a full, computed block under its key; False when another block has that key."""
        block = self.blocks[block_id]
        if block.key is not None or key in self.cached:
            return False
        block.key, block.parent, block.tokens = key, parent, tokens
        self.cached[key] = block_id
        return True

    def reclaim(self, block_id: int, owner: str) -> bool:
        """Takes back a free block this owner left (its partial tail), if it is still untouched."""
        block = self.blocks[block_id]
        if block.ref_count or block.owner != owner:
            return False
        self.acquire(block_id)
        return True

    def disown(self, block_id: int, owner: str) -> None:
        """The owner will not come back for this block: make it the first to be reused."""
        block = self.blocks[block_id]
        if block.ref_count == 0 and block.owner == owner:
            block.owner = None
            self.free.move_to_end(block_id, last=False)

    def reset_cache(self) -> int:
        """Forgets every cached block nobody references; returns how many were dropped."""
        dropped = 0
        for block_id in list(self.free):
            block = self.blocks[block_id]
            if block.key is not None:
                del self.cached[block.key]
                block.key, block.parent, block.tokens = None, None, ()
                dropped += 1
        return dropped

    def check_invariants(self, refs: list[int]) -> None:
        """Reference counts equal ``refs`` (what tests count from block tables and pins)."""
        for block in self.blocks:
            assert block.ref_count == refs[block.block_id], (block, refs[block.block_id])
            assert (block.ref_count == 0) == (block.block_id in self.free), block
            assert block.owner is None or block.ref_count == 0, block
        for key, block_id in self.cached.items():
            assert self.blocks[block_id].key == key
