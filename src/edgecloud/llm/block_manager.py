"""Paged KV-cache bookkeeping: fixed-size blocks, per-sequence block tables, reference counts,
and automatic prefix caching.

A full block is identified by a hash chained over every token before it, so two sequences whose
prompts begin alike reach the same physical blocks. Blocks nobody references stay cached and are
evicted least-recently-freed first when a fresh block is needed.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from edgecloud.llm.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: int | None = None
    tokens: tuple[int, ...] = ()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[int, int] = {}
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of those, tokens found cached

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- prefix cache -------------------------------------------------------------------------

    def _chain_hash(self, parent: int | None, tokens: tuple[int, ...]) -> int:
        return hash((parent, tokens))

    def _match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks covering the sequence's leading full blocks, leaving >= 1 token to compute."""
        if not self.enable_prefix_caching:
            return []
        bs = self.block_size
        hits: list[int] = []
        parent: int | None = None
        for i in range((seq.num_tokens - 1) // bs):
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            parent = self._chain_hash(parent, tokens)
            block_id = self.cached.get(parent)
            if block_id is None or self.blocks[block_id].tokens != tokens:
                break
            hits.append(block_id)
        return hits

    def register_computed(self, seq: Sequence) -> None:
        """Hashes the sequence's blocks that became full and computed, so others can reuse them."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        while (len(seq.block_hashes) + 1) * bs <= seq.num_computed_tokens:
            i = len(seq.block_hashes)
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            parent = seq.block_hashes[-1] if seq.block_hashes else None
            h = self._chain_hash(parent, tokens)
            seq.block_hashes.append(h)
            block = self.blocks[seq.block_table[i]]
            if block.hash is None and h not in self.cached:
                block.hash, block.tokens = h, tokens
                self.cached[h] = block.block_id

    # -- allocation ---------------------------------------------------------------------------

    def _take_free(self) -> int:
        block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None:
            del self.cached[block.hash]
            block.hash, block.tokens = None, ()
        block.ref_count = 1
        return block_id

    def _acquire(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free[block_id]
        block.ref_count += 1

    def admit(self, seq: Sequence, token_budget: int) -> int | None:
        """Gives a waiting sequence its cached prefix and blocks for its next chunk.

        Returns the number of new tokens to compute this step, or None (nothing changed) when the
        free blocks do not suffice.
        """
        assert not seq.block_table, "admit() is for sequences without blocks"
        hits = self._match_prefix(seq)
        cached_tokens = len(hits) * self.block_size
        num_new = min(seq.num_tokens - cached_tokens, token_budget)
        if num_new <= 0:
            return None
        needed = self.blocks_for(cached_tokens + num_new) - len(hits)
        revived = sum(1 for b in hits if self.blocks[b].ref_count == 0)
        if needed + revived > len(self.free):
            return None
        for block_id in hits:
            self._acquire(block_id)
        seq.block_table = hits + [self._take_free() for _ in range(needed)]
        seq.block_hashes = [h for b in hits if (h := self.blocks[b].hash) is not None]  # all cached
        seq.num_computed_tokens = cached_tokens
        if seq.index == 0 and seq.num_tokens == seq.num_prompt_tokens:
            self.prefix_queries += seq.num_prompt_tokens
            self.prefix_hits += cached_tokens
        return num_new

    def can_grow(self, seq: Sequence, num_tokens: int) -> bool:
        return self.blocks_for(num_tokens) - len(seq.block_table) <= len(self.free)

    def grow(self, seq: Sequence, num_tokens: int) -> None:
        """Extends the block table to hold ``num_tokens`` tokens (check ``can_grow`` first)."""
        for _ in range(self.blocks_for(num_tokens) - len(seq.block_table)):
            seq.block_table.append(self._take_free())

    def fork(self, parent: Sequence, child: Sequence) -> tuple[int, int] | None:
        """Child shares the parent's full blocks. A partly filled last block cannot be shared (both
        would append to it), so the child gets a copy: returns ``(src, dst)`` for the KV copy, or
        None when no copy is needed. Raises ``MemoryError`` when no block is free for the copy."""
        num_full = parent.num_computed_tokens // self.block_size
        partial = parent.num_computed_tokens % self.block_size != 0
        if partial and not self.free:
            raise MemoryError("no free KV block to fork a sequence")
        for block_id in parent.block_table[:num_full]:
            self._acquire(block_id)
        child.block_table = parent.block_table[:num_full]
        child.block_hashes = list(parent.block_hashes[:num_full])
        child.num_computed_tokens = parent.num_computed_tokens
        if not partial:
            return None
        copy = self._take_free()
        child.block_table.append(copy)
        return parent.block_table[num_full], copy

    def release(self, seq: Sequence) -> None:
        """Drops the sequence's references. Cached blocks go to the back of the eviction order,
        uncached ones to the front; a sequence's tail is evicted before its (more shared) head."""
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
                if block.hash is None:
                    self.free.move_to_end(block_id, last=False)
        seq.block_table = []
        seq.block_hashes = []
        seq.num_computed_tokens = 0

    def check_invariants(self, live: list[Sequence]) -> None:
        """Reference counts equal the block-table references of ``live`` sequences (tests use it)."""
        refs = [0] * len(self.blocks)
        for seq in live:
            for block_id in seq.block_table:
                refs[block_id] += 1
        for block in self.blocks:
            assert block.ref_count == refs[block.block_id], (block, refs[block.block_id])
            assert (block.ref_count == 0) == (block.block_id in self.free), block
        for h, block_id in self.cached.items():
            assert self.blocks[block_id].hash == h
