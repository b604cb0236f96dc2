"""The simulator's lazily built block pool makes the engine pool's decisions with the same block ids."""

from __future__ import annotations

import random

import pytest

from edgecloud.llm.kv_cache.block_pool import BlockPool
from edgecloud.sim.lazy_pool import LazyBlockPool


@pytest.mark.parametrize("seed", range(5))
def test_the_lazy_pool_takes_the_blocks_the_engine_pool_takes(seed: int) -> None:
    rng = random.Random(seed)
    size = 24
    eager, lazy = BlockPool(size), LazyBlockPool(size)
    held: list[int] = []  # blocks with references (the same ids in both pools)
    owned: dict[int, str] = {}  # free blocks a preempted request left behind
    keys = 0
    for _ in range(3000):
        op = rng.random()
        if op < 0.35 and eager.num_free:
            block_id = eager.take()
            assert lazy.take() == block_id
            owned.pop(block_id, None)
            held.append(block_id)
        elif op < 0.6 and held:
            block_id = held.pop(rng.randrange(len(held)))
            if rng.random() < 0.5 and eager.blocks[block_id].key is None:
                keys += 1
                key = keys.to_bytes(4, "little") * 8
                assert eager.register(block_id, key, b"p", (keys,)) == lazy.register(block_id, key, b"p", (keys,))
            owner = f"r{block_id}" if rng.random() < 0.3 else None
            eager.release(block_id, owner)
            lazy.release(block_id, owner)
            if owner is not None and eager.blocks[block_id].owner == owner:
                owned[block_id] = owner
        elif op < 0.75 and eager.cached:
            key = rng.choice(list(eager.cached))
            block_id = eager.get_cached(key)
            assert lazy.get_cached(key) == block_id is not None
            eager.acquire(block_id)
            lazy.acquire(block_id)
            owned.pop(block_id, None)
            held.append(block_id)
        elif op < 0.85 and owned:
            block_id, owner = owned.popitem()
            if rng.random() < 0.5:
                assert eager.reclaim(block_id, owner) == lazy.reclaim(block_id, owner)
                if eager.blocks[block_id].ref_count:
                    held.append(block_id)
            else:
                eager.disown(block_id, owner)
                lazy.disown(block_id, owner)
        elif op < 0.86:
            assert eager.reset_cache() == lazy.reset_cache()
        assert (eager.num_free, eager.cached) == (lazy.num_free, lazy.cached)
        free = lazy.free
        assert list(eager.free) == [*free.front, *range(len(lazy.blocks), size), *free.back]  # type: ignore[attr-defined]
    refs = [0] * size
    for block_id in held:
        refs[block_id] += 1
    eager.check_invariants(refs)
    lazy.check_invariants(refs)
    assert len(lazy.blocks) == size  # every block got used: the lazy pool was exercised in full


def test_the_lazy_pool_builds_nothing_until_asked() -> None:
    pool = LazyBlockPool(10**7)
    assert (pool.num_blocks, pool.num_free, len(pool.blocks)) == (10**7, 10**7, 0)
    assert pool.take() == 0 and len(pool.blocks) == 1
