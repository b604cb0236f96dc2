"""A KV block pool whose blocks exist once first taken: the engine's ``BlockPool`` for simulated
instances, whose pools are large (an H100 running Llama-3-8B holds ~27,000 blocks of 16 tokens,
8 x H100 running Llama-3-70B ~83,000) while a run touches a fraction of them. Built eagerly they cost
6.5 MiB and ~0.1 s of CPU per instance before the first request, 6.5 GB for 1,000 instances.

The engine's free queue starts as every block in id order; a block that holds nothing reusable is
freed to its front, one holding a key (or a preempted request's tail) to its back, and blocks are
taken from the front. So at any time it reads: blocks freed to the front, then the never-used ones
in id order, then blocks freed to the back. ``LazyFreeQueue`` keeps the first and last parts and a
count of the middle one, and creates a block when it hands out a never-used id; the pool's own
code (``BlockPool``: take, acquire, release, disown) runs unchanged over it, so it makes the same
decisions with the same block ids.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from edgecloud.llm.kv_cache.block_pool import Block, BlockPool


class LazyFreeQueue:
    """The part of ``OrderedDict[int, None]``'s interface that ``BlockPool`` uses for its free queue."""

    def __init__(self, blocks: list[Block], size: int) -> None:
        self.blocks = blocks  # the pool's blocks: ids 0 .. len - 1 exist, the rest were never used
        self.size = size
        self.front: OrderedDict[int, None] = OrderedDict()
        self.back: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self.front) + self.size - len(self.blocks) + len(self.back)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self.front or block_id in self.back or (
            isinstance(block_id, int) and len(self.blocks) <= block_id < self.size)

    def __iter__(self) -> Iterator[int]:
        """The free blocks that exist (never-used ones hold nothing to look at)."""
        yield from self.front
        yield from self.back

    def popitem(self, last: bool = True) -> tuple[int, None]:
        assert not last, "the pool takes from the front"
        if self.front:
            return self.front.popitem(last=False)
        if len(self.blocks) < self.size:
            self.blocks.append(Block(len(self.blocks)))
            return len(self.blocks) - 1, None
        if self.back:
            return self.back.popitem(last=False)
        raise KeyError("popitem(): the free queue is empty")

    def __setitem__(self, block_id: int, value: None) -> None:  # a block freed: to the back first
        self.back[block_id] = value

    def __delitem__(self, block_id: int) -> None:
        if block_id in self.front:
            del self.front[block_id]
        else:
            del self.back[block_id]

    def move_to_end(self, block_id: int, last: bool = True) -> None:
        assert not last, "the pool moves blocks to the front only"
        self.back.pop(block_id, None)
        self.front[block_id] = None
        self.front.move_to_end(block_id, last=False)


class LazyBlockPool(BlockPool):
    def __init__(self, num_blocks: int) -> None:  # deliberately not BlockPool's: nothing is built yet
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.size = num_blocks
        self.blocks: list[Block] = []
        self.free = LazyFreeQueue(self.blocks, num_blocks)  # type: ignore[assignment]
        self.cached = {}

    @property
    def num_blocks(self) -> int:
        return self.size

    def check_invariants(self, refs: list[int]) -> None:
        assert not any(refs[len(self.blocks):]), "a never-used block is referenced"
        super().check_invariants(refs)
