"""A KV block pool whose blocks exist once first taken: the engine's ``BlockPool`` for simulated
instances, whose pools are large (an H100 running Llama-3-8B holds ~27,000 blocks of 16 tokens,
8 x H100 running Llama-3-70B ~83,000) while a run touches a fraction of them. Built eagerly they cost
6.5 MiB and ~0.1 s of CPU per instance before the first request, 6.5 GB for 1,000 instances.

The engine's free queue starts as every block in id order; a block that holds nothing reusable is
freed to its front, one holding a key (or a preempted request's tail) to its back, and blocks are
taken from the front. So at any time it reads: blocks freed to the front, then the never-used ones
in id order, then blocks freed to the back. This pool keeps the first and last parts and a count
of the middle one, and makes the same decisions with the same block ids as ``BlockPool``.
"""

from __future__ import annotations

from collections import OrderedDict

from edgecloud.llm.kv_cache.block_pool import Block, BlockPool


class LazyBlockPool(BlockPool):
    def __init__(self, num_blocks: int) -> None:  # deliberately not BlockPool's: nothing built yet
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.size = num_blocks
        self.blocks: list[Block] = []  # the ones taken at least once: ids 0 .. len - 1
        self.front: OrderedDict[int, None] = OrderedDict()
        self.back: OrderedDict[int, None] = OrderedDict()
        self.cached = {}

    @property
    def num_blocks(self) -> int:
        return self.size

    @property
    def num_free(self) -> int:
        return len(self.front) + self.size - len(self.blocks) + len(self.back)

    def _is_free(self, block_id: int) -> bool:
        return block_id in self.front or block_id in self.back or block_id >= len(self.blocks)

    def take(self) -> int:
        if self.front:
            block_id, _ = self.front.popitem(last=False)
        elif len(self.blocks) < self.size:
            block_id = len(self.blocks)
            self.blocks.append(Block(block_id, ref_count=1))
            return block_id
        elif self.back:
            block_id, _ = self.back.popitem(last=False)
        else:
            raise MemoryError("no free KV block")
        block = self.blocks[block_id]
        if block.key is not None:
            del self.cached[block.key]
            block.key, block.parent, block.tokens = None, None, ()
        block.owner = None
        block.ref_count = 1
        return block_id

    def acquire(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            self.front.pop(block_id, None)
            self.back.pop(block_id, None)
            block.owner = None
        block.ref_count += 1

    def release(self, block_id: int, owner: str | None = None) -> None:
        block = self.blocks[block_id]
        assert block.ref_count > 0, f"block {block_id} released more often than acquired"
        block.ref_count -= 1
        if block.ref_count:
            return
        if block.key is None and owner is not None:
            block.owner = owner
        if block.key is None and owner is None:
            self.front[block_id] = None
            self.front.move_to_end(block_id, last=False)
        else:
            self.back[block_id] = None

    def disown(self, block_id: int, owner: str) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0 and block.owner == owner:
            block.owner = None
            self.back.pop(block_id, None)
            self.front[block_id] = None
            self.front.move_to_end(block_id, last=False)

    def reset_cache(self) -> int:
        dropped = 0
        for block_id in [*self.front, *self.back]:
            block = self.blocks[block_id]
            if block.key is not None:
                del self.cached[block.key]
                block.key, block.parent, block.tokens = None, None, ()
                dropped += 1
        return dropped

    def check_invariants(self, refs: list[int]) -> None:
        for block_id in range(self.size):
            if block_id >= len(self.blocks):
                assert refs[block_id] == 0, block_id
                continue
            block = self.blocks[block_id]
            assert block.ref_count == refs[block_id], (block, refs[block_id])
            assert (block.ref_count == 0) == self._is_free(block_id), block
            assert block.owner is None or block.ref_count == 0, block
        assert not self.front.keys() & self.back.keys()
        for key, block_id in self.cached.items():
            assert self.blocks[block_id].key == key
