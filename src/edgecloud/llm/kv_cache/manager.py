"""Gives requests their KV blocks, per layer group, with automatic prefix caching by stable keys.

Every layer group (a set of decoder layers whose KV is kept the same way) has its own
``BlockPool`` and its own block table per request. Today every group keeps full attention, so the
groups allocate alike; the split exists so that a later policy keeps less KV on some layers
(sink + recent window, issue #21) without another manager. A cached block counts as a hit only
when every group holds it.

Nothing here touches tensors or time: the runner reads the block tables, the scheduler calls
``admit``/``grow``/``preempt``/``free``, and the simulator drives the same object.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.kv_cache.block_pool import BlockPool
from edgecloud.llm.kv_cache.keys import BlockKey, block_key, chain_keys, root_key
from edgecloud.llm.request_state import Request, SavedPartial


@dataclass(frozen=True)
class LayerGroup:
    """Decoder layers whose KV is kept alike. ``kind``: ``full`` keeps every token's KV."""

    name: str
    layers: tuple[int, ...]
    kind: Literal["full"] = "full"


@dataclass(frozen=True)
class BlockExport:
    """One cached block as another engine can import it: ``key == block_key(parent, tokens)``;
    ``block_ids`` are this engine's blocks per layer group (the runner reads their tensors)."""

    key: BlockKey
    parent: BlockKey
    tokens: tuple[int, ...]
    block_ids: tuple[int, ...]


class KVCacheManager:
    def __init__(
        self,
        groups: list[LayerGroup],
        num_blocks: int,
        block_size: int,
        model_fingerprint: bytes,
        enable_prefix_caching: bool = True,
    ) -> None:
        if not groups:
            raise ValueError("at least one layer group is needed")
        self.groups = groups
        self.block_size = block_size
        self.fingerprint = model_fingerprint
        self.enable_prefix_caching = enable_prefix_caching
        self.pools = [BlockPool(num_blocks) for _ in groups]
        self.pins: Counter[BlockKey] = Counter()
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of those, tokens found cached

    # -- sizes --------------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return self.pools[0].num_blocks

    @property
    def num_free_blocks(self) -> int:
        return min(pool.num_free for pool in self.pools)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    # -- keys and lookup ------------------------------------------------------------------------

    def root(self, req: Request) -> BlockKey:
        if req.root is None:
            req.root = root_key(self.fingerprint, req.adapter_id, req.cache_salt)
        return req.root

    def _cached_ids(self, key: BlockKey) -> list[int] | None:
        ids = []
        for pool in self.pools:
            block_id = pool.get_cached(key)
            if block_id is None:
                return None
            ids.append(block_id)
        return ids

    def lookup(self, token_ids: list[int], root: BlockKey) -> int:
        """How many leading tokens of ``token_ids`` are cached (whole blocks), without changing
        anything: what a router asks of each instance."""
        if not self.enable_prefix_caching:
            return 0
        hits = 0
        for key in chain_keys(root, token_ids, self.block_size):
            if self._cached_ids(key) is None:
                break
            hits += 1
        return hits * self.block_size

    def _match(self, req: Request) -> tuple[list[BlockKey], list[list[int]]]:
        """Keys and block ids (per group) of the request's leading cached blocks, leaving at
        least one token to compute."""
        if not self.enable_prefix_caching:
            return [], [[] for _ in self.pools]
        limit = (req.num_tokens - 1) // self.block_size
        keys = chain_keys(self.root(req), req.all_token_ids, self.block_size, req.block_keys[:limit], limit)
        hits: list[list[int]] = [[] for _ in self.pools]
        matched = 0
        for key in keys:
            ids = self._cached_ids(key)
            if ids is None:
                break
            for group_hits, block_id in zip(hits, ids, strict=True):
                group_hits.append(block_id)
            matched += 1
        return keys[:matched], hits

    # -- allocation ---------------------------------------------------------------------------

    def admit(self, req: Request, token_budget: int) -> int | None:
        """Gives a waiting request its cached prefix (and, after a preemption, its own partial last
        block if still untouched) and blocks for its next chunk. Returns how many tokens to
        compute this step, or None (nothing changed) when the free blocks do not suffice."""
        assert not any(req.block_tables), "admit() is for requests without blocks"
        if len(req.block_tables) != len(self.pools):
            req.block_tables = [[] for _ in self.pools]
        keys, hits = self._match(req)
        cached = len(keys) * self.block_size
        partial = req.partial
        if partial is not None and not (
            partial.num_full_blocks == len(keys)
            and cached + partial.num_tokens < req.num_tokens
            and all(pool.blocks[b].ref_count == 0 and pool.blocks[b].owner == req.request_id
                    for pool, b in zip(self.pools, partial.block_ids, strict=True))
        ):
            self._drop_partial(req)
            partial = None
        reused = cached + (partial.num_tokens if partial is not None else 0)
        num_new = min(req.num_tokens - reused, token_budget)
        if num_new <= 0:
            return None
        have = len(keys) + (partial is not None)
        needed = self.blocks_for(reused + num_new) - have
        for pool, group_hits in zip(self.pools, hits, strict=True):
            revived = sum(1 for b in group_hits if pool.blocks[b].ref_count == 0) + (partial is not None)
            if needed + revived > pool.num_free:
                return None
        for g, pool in enumerate(self.pools):
            for block_id in hits[g]:
                pool.acquire(block_id)
            table = list(hits[g])
            if partial is not None:
                assert pool.reclaim(partial.block_ids[g], req.request_id)
                table.append(partial.block_ids[g])
            table.extend(pool.take() for _ in range(needed))
            req.block_tables[g] = table
        req.partial = None
        req.block_keys = keys
        req.num_computed_tokens = reused
        if req.num_cached_tokens is None:
            req.num_cached_tokens = cached
            self.prefix_queries += req.num_prompt_tokens
            self.prefix_hits += cached
        return num_new

    def can_grow(self, req: Request, num_tokens: int) -> bool:
        need = self.blocks_for(num_tokens)
        return all(need - len(table) <= pool.num_free for pool, table in zip(self.pools, req.block_tables, strict=True))

    def grow(self, req: Request, num_tokens: int) -> None:
        """Extends the block tables to hold ``num_tokens`` tokens (check ``can_grow`` first)."""
        need = self.blocks_for(num_tokens)
        for pool, table in zip(self.pools, req.block_tables, strict=True):
            table.extend(pool.take() for _ in range(need - len(table)))

    def register_computed(self, req: Request) -> None:
        """Keys the request's blocks that became full and computed, so others can reuse them."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        while (len(req.block_keys) + 1) * bs <= req.num_computed_tokens:
            i = len(req.block_keys)
            tokens = tuple(req.all_token_ids[i * bs : (i + 1) * bs])
            parent = req.block_keys[-1] if req.block_keys else self.root(req)
            key = block_key(parent, tokens)
            req.block_keys.append(key)
            for pool, table in zip(self.pools, req.block_tables, strict=True):
                pool.register(table[i], key, parent, tokens)

    # -- giving blocks back ----------------------------------------------------------------------

    def preempt(self, req: Request) -> None:
        """Frees a running request's blocks so it can wait and come back. Its full blocks stay in
        the cache under their keys; its partly computed last block stays in the free queue marked
        as its own, to be taken back on resume if no one needed it meanwhile."""
        bs = self.block_size
        num_full, tail = divmod(req.num_computed_tokens, bs)
        keep_tail = tail > 0 and num_full < len(req.block_tables[0])
        for pool, table in zip(self.pools, req.block_tables, strict=True):
            for i in range(len(table) - 1, -1, -1):
                pool.release(table[i], owner=req.request_id if keep_tail and i == num_full else None)
        req.partial = (
            SavedPartial(num_full, tail, [table[num_full] for table in req.block_tables]) if keep_tail else None
        )
        req.block_keys = req.block_keys[:num_full]
        req.block_tables = [[] for _ in self.pools]
        req.num_computed_tokens = 0

    def free(self, req: Request) -> None:
        """Releases every block of a finished or aborted request; its full blocks stay cached."""
        for pool, table in zip(self.pools, req.block_tables, strict=True):
            for block_id in reversed(table):
                pool.release(block_id)
        req.block_tables = [[] for _ in self.pools]
        self._drop_partial(req)

    def _drop_partial(self, req: Request) -> None:
        if req.partial is not None:
            for pool, block_id in zip(self.pools, req.partial.block_ids, strict=True):
                pool.disown(block_id, req.request_id)
            req.partial = None

    # -- pins, export and import ------------------------------------------------------------------

    def pin(self, keys: list[BlockKey]) -> list[BlockKey]:
        """Keeps cached blocks from eviction until ``unpin``; returns the keys that were cached."""
        pinned = []
        for key in keys:
            ids = self._cached_ids(key)
            if ids is None:
                continue
            for pool, block_id in zip(self.pools, ids, strict=True):
                pool.acquire(block_id)
            self.pins[key] += 1
            pinned.append(key)
        return pinned

    def unpin(self, keys: list[BlockKey]) -> None:
        for key in keys:
            if self.pins[key] <= 0:
                raise InvalidRequestError("unpin of a key that is not pinned", "keys")
            ids = self._cached_ids(key)
            assert ids is not None, "a pinned block is never evicted"
            for pool, block_id in zip(self.pools, ids, strict=True):
                pool.release(block_id)
            self.pins[key] -= 1
            if not self.pins[key]:
                del self.pins[key]

    def export_blocks(self, keys: list[BlockKey]) -> list[BlockExport]:
        """The cached blocks among ``keys``, in order, stopping at the first that is not cached."""
        exports = []
        for key in keys:
            ids = self._cached_ids(key)
            if ids is None:
                break
            block = self.pools[0].blocks[ids[0]]
            assert block.parent is not None, "a cached block knows its parent"
            exports.append(BlockExport(key, block.parent, block.tokens, tuple(ids)))
        return exports

    def import_blocks(
        self, blocks: list[tuple[BlockKey, BlockKey, tuple[int, ...]]]
    ) -> list[tuple[int, tuple[int, ...]]]:
        """Makes room for blocks exported by another engine: ``(key, parent, tokens)`` each, in
        chain order. A key that does not hash from its parent and tokens is refused. Blocks already
        cached here are skipped. Returns ``(index, block ids per group)`` of each block to write; the
        caller writes the tensors. Stops early when no free block is left."""
        to_write: list[tuple[int, tuple[int, ...]]] = []
        room = self.num_free_blocks  # more would evict the blocks this import just wrote
        for index, (key, parent, tokens) in enumerate(blocks):
            if len(tokens) != self.block_size or block_key(parent, tokens) != key:
                raise InvalidRequestError(f"block {index}: key does not match its parent and tokens", "blocks")
            if self._cached_ids(key) is not None:
                continue
            if len(to_write) >= room:
                break
            ids = []
            for pool in self.pools:
                block_id = pool.take()
                pool.register(block_id, key, parent, tuple(tokens))
                pool.release(block_id)
                ids.append(block_id)
            to_write.append((index, tuple(ids)))
        return to_write

    def reset_prefix_cache(self) -> int:
        """Forgets every cached block nobody uses; returns how many blocks (per group) were dropped."""
        return max(pool.reset_cache() for pool in self.pools)

    def check_invariants(self, live: list[Request]) -> None:
        """Reference counts equal the block-table references of ``live`` requests plus pins."""
        for g, pool in enumerate(self.pools):
            refs = [0] * pool.num_blocks
            for req in live:
                for block_id in req.block_tables[g]:
                    refs[block_id] += 1
            for key, count in self.pins.items():
                ids = self._cached_ids(key)
                assert ids is not None, "a pinned block is cached"
                refs[ids[g]] += count
            pool.check_invariants(refs)
