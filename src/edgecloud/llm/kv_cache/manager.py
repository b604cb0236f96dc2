"""Gives requests their KV blocks, per layer group, with automatic prefix caching by stable keys.

Every layer group (a set of decoder layers whose KV is kept the same way, ``layer_group.py``) has
its own ``BlockPool`` and its own block table per request; pools may differ in size. A block table
is positional (entry ``i`` holds tokens ``i * block_size ..``); ``-1`` marks a block the group does
not hold.

``full`` groups keep every block. ``sink_window`` groups (OmniAttn, issue #21) hold all of a
request's blocks while its prompt is computed (prefill is full attention), then give back the
blocks between the sink and the window as decoding moves on (``grow``), so a decoding request holds
at most ``sink_blocks + window_blocks`` blocks there. What the prefix cache shares:

* Only blocks computed by prefill (inside the prompt) are keyed when a group is compressed: their KV
  is what a full model computes, whatever the layer pattern; blocks written while decoding depend
  on the compression, so they stay private to their request.
* A cached prefix of ``n`` blocks is a hit when every full group holds all ``n`` and every
  compressed group holds the sink and the ``window_blocks`` blocks ending at block ``n``; a
  compressed group may have lost blocks between (given back by a decoding request, then evicted).
  The request's own tokens then attend, on that group's layers, to every key the group holds:
  exactly a full prefill when nothing is missing, and the compressed view of the cached part when
  something is.
* ``pin`` (a KV export, a session) pins every block in full groups, and in compressed groups only
  the sink and the last ``window_blocks + 1`` blocks of the chain: what the receiving side keeps
  (the extra block because it recomputes at least the prompt's last token). ``export_blocks``
  sends a compressed group's part of a pinned block only where it is pinned there.

Nothing here touches tensors or time: the runner reads the block tables, the scheduler calls
``admit``/``grow``/``preempt``/``free``, and the simulator drives the same object.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.kv_cache.block_pool import BlockPool
from edgecloud.llm.kv_cache.keys import BlockKey, block_key, chain_keys, root_key
from edgecloud.llm.kv_cache.layer_group import LayerGroup
from edgecloud.llm.request_state import Request, SavedPartial

__all__ = ["BlockExport", "KVCacheManager", "LayerGroup"]


@dataclass(frozen=True)
class BlockExport:
    """One cached block as another engine can import it: ``key == block_key(parent, tokens)``;
    ``block_ids`` are this engine's blocks per layer group (the runner reads their tensors), ``-1``
    where a compressed group does not send this block."""

    key: BlockKey
    parent: BlockKey
    tokens: tuple[int, ...]
    block_ids: tuple[int, ...]


class KVCacheManager:
    def __init__(
        self,
        groups: list[LayerGroup],
        num_blocks: int | Sequence[int],
        block_size: int,
        model_fingerprint: bytes,
        enable_prefix_caching: bool = True,
    ) -> None:
        """``num_blocks``: one pool size for every group, or one per group."""
        if not groups:
            raise ValueError("at least one layer group is needed")
        sizes = [num_blocks] * len(groups) if isinstance(num_blocks, int) else list(num_blocks)
        if len(sizes) != len(groups):
            raise ValueError(f"num_blocks has {len(sizes)} pool sizes for {len(groups)} layer groups")
        self.groups = groups
        self.block_size = block_size
        self.fingerprint = model_fingerprint
        self.enable_prefix_caching = enable_prefix_caching
        self.pools = [BlockPool(n) for n in sizes]
        self.full_groups = [g for g, group in enumerate(groups) if not group.compressed]
        self.compressed_groups = [g for g, group in enumerate(groups) if group.compressed]
        self.pins: Counter[BlockKey] = Counter()
        # per compressed group: pins of keys that group keeps (a subset of ``pins``)
        self.group_pins: dict[int, Counter[BlockKey]] = {g: Counter() for g in self.compressed_groups}
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of those, tokens found cached

    # -- sizes --------------------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        """The most blocks one request can hold in every group (the smallest pool)."""
        return min(pool.num_blocks for pool in self.pools)

    @property
    def num_free_blocks(self) -> int:
        return min(pool.num_free for pool in self.pools)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def usage(self) -> float:
        """The fullest pool's used fraction."""
        return max(1.0 - pool.num_free / pool.num_blocks for pool in self.pools)

    # -- keys and lookup ------------------------------------------------------------------------

    def root(self, req: Request) -> BlockKey:
        if req.root is None:
            req.root = root_key(self.fingerprint, req.adapter_id, req.cache_salt)
        return req.root

    def _hit(self, keys: list[BlockKey]) -> tuple[int, list[list[int]]]:
        """The longest cached prefix of the chain ``keys`` (module docstring: full groups hold all
        of it, compressed groups its sink and window) and each group's block ids (``-1``: not held)."""
        ids: list[list[int]] = [[] for _ in self.pools]
        for key in keys:
            found = [pool.get_cached(key) for pool in self.pools]
            if any(found[g] is None for g in self.full_groups):
                break
            for group_ids, block_id in zip(ids, found, strict=True):
                group_ids.append(-1 if block_id is None else block_id)
        n = len(ids[0])
        if self.compressed_groups:
            missing = {g: [0] for g in self.compressed_groups}  # missing[g][i]: blocks < i not held
            for g in self.compressed_groups:
                for block_id in ids[g]:
                    missing[g].append(missing[g][-1] + (block_id < 0))

            def holds(g: int, n: int) -> bool:
                group, miss = self.groups[g], missing[g]
                window_start = max(group.sink_blocks, n - group.window_blocks)
                return miss[min(group.sink_blocks, n)] == 0 and miss[n] == miss[window_start]

            while n and not all(holds(g, n) for g in self.compressed_groups):
                n -= 1
        return n, [group_ids[:n] for group_ids in ids]

    def lookup(self, token_ids: list[int], root: BlockKey) -> int:
        """How many leading tokens of ``token_ids`` are cached (whole blocks), without changing
        anything: what a router asks of each instance."""
        if not self.enable_prefix_caching:
            return 0
        return self._hit(chain_keys(root, token_ids, self.block_size))[0] * self.block_size

    def _hinted(self, req: Request) -> list[BlockKey] | None:
        """The request's prompt block keys computed ahead (``Request.key_hint``), if from our root."""
        hint = req.key_hint
        return hint[1] if hint is not None and hint[0] == self.root(req) else None

    def _match(self, req: Request) -> tuple[list[BlockKey], list[list[int]]]:
        """Keys and block ids (per group, ``-1`` where a compressed group lacks one) of the
        request's leading cached blocks, leaving at least one token to compute."""
        if not self.enable_prefix_caching:
            return [], [[] for _ in self.pools]
        limit = (req.num_tokens - 1) // self.block_size
        known = req.block_keys[:limit]
        hinted = self._hinted(req)
        if hinted is not None and len(hinted) > len(known):  # both chain the same prompt from one root
            known = hinted[:limit]
        keys = chain_keys(self.root(req), req.all_token_ids, self.block_size, known, limit)
        matched, hits = self._hit(keys)
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
            revived = sum(1 for b in group_hits if b >= 0 and pool.blocks[b].ref_count == 0) + (partial is not None)
            if needed + revived > pool.num_free:
                return None
        for g, pool in enumerate(self.pools):
            for block_id in hits[g]:
                if block_id >= 0:
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

    def _droppable(self, g: int, req: Request) -> list[int]:
        """Table indices a compressed group gives back before the request's next tokens: once its
        prompt is computed, the held blocks between the sink and the next token's window."""
        group = self.groups[g]
        if not group.compressed or req.num_computed_tokens < req.num_prompt_tokens:
            return []
        table = req.block_tables[g]
        floor = min(group.drop_floor(req.num_computed_tokens, self.block_size), len(table))
        return [i for i in range(group.sink_blocks, floor) if table[i] >= 0]

    def can_grow(self, req: Request, num_tokens: int) -> bool:
        need = self.blocks_for(num_tokens)
        for g, (pool, table) in enumerate(zip(self.pools, req.block_tables, strict=True)):
            new = need - len(table)
            if new <= 0:
                continue
            freed = sum(1 for i in self._droppable(g, req) if pool.blocks[table[i]].ref_count == 1)
            if new > pool.num_free + freed:
                return False
        return True

    def grow(self, req: Request, num_tokens: int) -> None:
        """Extends the block tables to hold ``num_tokens`` tokens (check ``can_grow`` first); a
        compressed group first gives back the blocks that left the request's window."""
        need = self.blocks_for(num_tokens)
        for g, (pool, table) in enumerate(zip(self.pools, req.block_tables, strict=True)):
            for i in self._droppable(g, req):
                pool.release(table[i])
                table[i] = -1
            table.extend(pool.take() for _ in range(need - len(table)))

    def register_computed(self, req: Request) -> None:
        """Keys the request's blocks that became full and computed, so others can reuse them (with
        compressed groups, only blocks inside the prompt: see the module docstring)."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        limit = req.num_computed_tokens
        if self.compressed_groups:
            limit = min(limit, req.num_prompt_tokens)
        hinted = self._hinted(req) if (len(req.block_keys) + 1) * bs <= limit else None
        while (len(req.block_keys) + 1) * bs <= limit:
            i = len(req.block_keys)
            tokens = tuple(req.all_token_ids[i * bs : (i + 1) * bs])
            parent = req.block_keys[-1] if req.block_keys else self.root(req)
            key = hinted[i] if hinted is not None and i < len(hinted) else block_key(parent, tokens)
            req.block_keys.append(key)
            for pool, table in zip(self.pools, req.block_tables, strict=True):
                if table[i] >= 0:
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
                if table[i] >= 0:
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
                if block_id >= 0:
                    pool.release(block_id)
        req.block_tables = [[] for _ in self.pools]
        self._drop_partial(req)

    def _drop_partial(self, req: Request) -> None:
        if req.partial is not None:
            for pool, block_id in zip(self.pools, req.partial.block_ids, strict=True):
                pool.disown(block_id, req.request_id)
            req.partial = None

    # -- pins, export and import ------------------------------------------------------------------

    def _keeps_pinned(self, g: int, position: int, chain_len: int) -> bool:
        """Whether compressed group ``g`` pins block ``position`` of a pinned chain: its sink, and
        the last ``window_blocks + 1`` blocks (the receiver recomputes at least one prompt token,
        so its hit may end one block early)."""
        group = self.groups[g]
        return position < group.sink_blocks or position >= chain_len - group.window_blocks - 1

    def pin(self, keys: list[BlockKey]) -> list[BlockKey]:
        """Keeps cached blocks from eviction until ``unpin``; returns the keys that were cached.
        ``keys`` is a chain from its first block (a request's ``block_keys``): compressed groups pin
        only its sink and window (module docstring)."""
        pinned = []
        for position, key in enumerate(keys):
            found = [pool.get_cached(key) for pool in self.pools]
            keeps = {g: self._keeps_pinned(g, position, len(keys)) for g in self.compressed_groups}
            if any(found[g] is None for g in self.full_groups) or any(
                keep and found[g] is None for g, keep in keeps.items()
            ):
                continue
            for g, (pool, block_id) in enumerate(zip(self.pools, found, strict=True)):
                if g in keeps and not keeps[g]:
                    continue
                assert block_id is not None
                pool.acquire(block_id)
                if g in keeps:
                    self.group_pins[g][key] += 1
            self.pins[key] += 1
            pinned.append(key)
        return pinned

    def unpin(self, keys: list[BlockKey]) -> None:
        for key in keys:
            if self.pins[key] <= 0:
                raise InvalidRequestError("unpin of a key that is not pinned", "keys")
            for g, pool in enumerate(self.pools):
                if g in self.group_pins:
                    # a key pinned by several chains may be kept here by some of them only: the
                    # pins that did not keep it here are the first to go
                    if self.group_pins[g][key] < self.pins[key]:
                        continue
                    self.group_pins[g][key] -= 1
                    if not self.group_pins[g][key]:
                        del self.group_pins[g][key]
                block_id = pool.get_cached(key)
                assert block_id is not None, "a pinned block is never evicted"
                pool.release(block_id)
            self.pins[key] -= 1
            if not self.pins[key]:
                del self.pins[key]

    def export_blocks(self, keys: list[BlockKey]) -> list[BlockExport]:
        """The cached blocks among ``keys``, in order, stopping at the first that a full group does
        not hold. A compressed group sends a pinned block only where it pinned it (what the
        receiver keeps), an unpinned one wherever it holds it; a block no group sends is left out."""
        exports = []
        for key in keys:
            found = [pool.get_cached(key) for pool in self.pools]
            if any(found[g] is None for g in self.full_groups):
                break
            ids = []
            for g, block_id in enumerate(found):
                if g in self.group_pins and self.pins[key] and not self.group_pins[g][key]:
                    block_id = None
                ids.append(-1 if block_id is None else block_id)
            g = next((g for g, block_id in enumerate(ids) if block_id >= 0), None)
            if g is None:
                continue
            block = self.pools[g].blocks[ids[g]]
            assert block.parent is not None, "a cached block knows its parent"
            exports.append(BlockExport(key, block.parent, block.tokens, tuple(ids)))
        return exports

    def import_blocks(
        self,
        blocks: list[tuple[BlockKey, BlockKey, tuple[int, ...]]],
        present: list[tuple[bool, ...]] | None = None,
    ) -> list[tuple[int, tuple[int, ...]]]:
        """Makes room for blocks exported by another engine: ``(key, parent, tokens)`` each, in
        chain order; ``present[i][g]``: whether block ``i`` brings group ``g``'s layers (default:
        all). A key that does not hash from its parent and tokens is refused. Blocks (and group
        parts) already cached here are skipped. Returns ``(index, block ids per group)`` of each
        block to write, ``-1`` for a group not written; the caller writes the tensors. Stops at the
        first block a full group lacks data or room for; a compressed group without room skips."""
        to_write: list[tuple[int, tuple[int, ...]]] = []
        # more would evict the blocks this import just wrote
        room = [pool.num_free for pool in self.pools]
        for index, (key, parent, tokens) in enumerate(blocks):
            if len(tokens) != self.block_size or block_key(parent, tokens) != key:
                raise InvalidRequestError(f"block {index}: key does not match its parent and tokens", "blocks")
            has = present[index] if present is not None else (True,) * len(self.pools)
            write = [has[g] and pool.get_cached(key) is None for g, pool in enumerate(self.pools)]
            if any((not has[g] and self.pools[g].get_cached(key) is None) or (write[g] and not room[g])
                   for g in self.full_groups):
                break
            ids = []
            for g, pool in enumerate(self.pools):
                if not write[g] or not room[g]:
                    ids.append(-1)
                    continue
                block_id = pool.take()
                pool.register(block_id, key, parent, tuple(tokens))
                pool.release(block_id)
                room[g] -= 1
                ids.append(block_id)
            if any(block_id >= 0 for block_id in ids):
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
                    if block_id >= 0:
                        refs[block_id] += 1
            pins = self.group_pins.get(g, self.pins)
            for key, count in pins.items():
                block_id = pool.get_cached(key)
                assert block_id is not None, "a pinned block is cached"
                refs[block_id] += count
            pool.check_invariants(refs)
