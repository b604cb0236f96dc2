"""The keyed KV cache manager: stable keys, prefix hits, eviction order, preemption that keeps what
it can, pins, export and import by key, and block accounting under random operations."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.kv_cache import KVCacheManager, LayerGroup, block_key, chain_keys, root_key
from edgecloud.llm.request import EngineCoreRequest
from edgecloud.llm.request_state import Request
from edgecloud.llm.sampling_params import SamplingParams

FINGERPRINT = b"model-a"


def manager(num_blocks: int, block_size: int, groups: int = 1) -> KVCacheManager:
    layer_groups = [LayerGroup(f"g{i}", (i,)) for i in range(groups)]
    return KVCacheManager(layer_groups, num_blocks, block_size, FINGERPRINT)


def request(tokens: list[int], rid: str = "r0", order: int = 0, **fields: object) -> Request:
    core = EngineCoreRequest(request_id=rid, prompt_token_ids=tokens, params=SamplingParams(), arrival_time=0.0,
                             **fields)  # type: ignore[arg-type]
    return Request.from_core_request(core, order, 1)


def compute(kv: KVCacheManager, req: Request) -> None:
    """Admits the whole prompt and marks it computed, as a finished prefill would."""
    assert kv.admit(req, token_budget=10_000) is not None
    req.num_computed_tokens = req.num_tokens
    kv.register_computed(req)


KEY_SCRIPT = (
    "from edgecloud.llm.kv_cache import chain_keys, root_key\n"
    "print(b''.join(chain_keys(root_key(b'model-a', {adapter!r}, {salt!r}), list(range(64)), 16)).hex())\n"
)


def keys_in_fresh_process(adapter: str | None = None, salt: str | None = None) -> str:
    out = subprocess.run([sys.executable, "-c", KEY_SCRIPT.format(adapter=adapter, salt=salt)],
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def test_block_keys_are_equal_across_processes_and_differ_by_adapter_and_salt() -> None:
    first, second = keys_in_fresh_process(), keys_in_fresh_process()
    assert first == second and len(first) == 4 * 64  # four 32-byte keys
    here = b"".join(chain_keys(root_key(FINGERPRINT), list(range(64)), 16)).hex()
    assert here == first
    assert keys_in_fresh_process(adapter="sql-lora") != first
    assert keys_in_fresh_process(salt="tenant-b") != first
    assert keys_in_fresh_process(adapter="a", salt=None) != keys_in_fresh_process(adapter=None, salt="a")


def test_a_python_hash_collision_no_longer_shares_a_block() -> None:
    # The old key was hash((parent, tokens)) with the parent itself such a hash. Python reduces
    # integers modulo 2**61 - 1, so two chains whose block-0 hashes were 1 and 2**61 got equal keys
    # for every later block with equal tokens: another prompt's KV was served as a hit.
    tail = (7, 7, 7, 7)
    assert hash((1, tail)) == hash((2**61, tail))
    # The same attack on the new keys: two different parents, equal tokens, distinct keys...
    assert block_key((1).to_bytes(32, "little"), tail) != block_key((2**61).to_bytes(32, "little"), tail)
    # ...and in the manager, a prompt that shares only a later block with another shares nothing.
    kv = manager(num_blocks=8, block_size=4)
    victim = request([1, 2, 3, 4, *tail, 9])
    compute(kv, victim)
    kv.free(victim)
    attacker = request([5, 6, 7, 8, *tail, 9], rid="r1")
    assert kv.admit(attacker, token_budget=100) == 9
    assert attacker.num_computed_tokens == 0


def test_adapter_and_salt_partition_the_cache() -> None:
    kv = manager(num_blocks=16, block_size=4)
    base = request(list(range(12)))
    compute(kv, base)
    kv.free(base)
    for fields in ({"adapter_id": "a"}, {"cache_salt": "tenant-b"}):
        other = request(list(range(12)), rid=f"other-{fields}", **fields)
        assert kv.admit(other, token_budget=100) == 12  # nothing shared
        kv.free(other)
    same = request(list(range(12)), rid="same")
    assert kv.admit(same, token_budget=100) == 4  # two full blocks hit; the last is recomputed
    assert kv.lookup(list(range(12)), root_key(FINGERPRINT)) == 12
    assert kv.lookup(list(range(12)), root_key(FINGERPRINT, cache_salt="x")) == 0


def test_second_prompt_reuses_full_blocks_but_always_computes_its_last_token() -> None:
    kv = manager(num_blocks=8, block_size=4)
    first = request(list(range(12)))
    compute(kv, first)
    kv.free(first)
    same = request(list(range(12)), rid="r1")
    assert kv.admit(same, token_budget=100) == 4
    assert same.num_computed_tokens == 8
    assert kv.prefix_hits == 8 and kv.prefix_queries == 24
    kv.check_invariants([same])


def test_unreferenced_cached_blocks_are_evicted_last_and_least_recently_freed_first() -> None:
    kv = manager(num_blocks=4, block_size=2)
    old, new = request([1, 2, 3, 4, 9]), request([5, 6, 7, 8, 9], rid="r1")
    compute(kv, old)  # 3 blocks: two full (cached), one partial
    kv.free(old)
    compute(kv, new)  # reuses old's uncached tail block first, then evicts old's cached blocks
    kv.free(new)
    again = request([5, 6, 7, 8, 0], rid="r2")
    assert kv.admit(again, token_budget=100) == 1  # new's blocks survived: both full blocks hit
    kv.check_invariants([again])
    assert sum(b.key is not None for b in kv.pools[0].blocks) == 3  # old's head block + new's two


def test_preemption_keeps_full_blocks_cached_and_the_partial_tail_for_its_owner() -> None:
    kv = manager(num_blocks=8, block_size=4, groups=2)
    req = request(list(range(10)))
    compute(kv, req)
    req.all_token_ids.append(42)  # a sampled token, not computed yet
    kv.preempt(req)
    assert not any(req.block_tables) and req.partial is not None
    kv.check_invariants([])
    assert kv.admit(req, token_budget=100) == 1  # 8 cached + 2 in its own partial block
    assert req.num_computed_tokens == 10
    kv.check_invariants([req])


def test_a_partial_tail_taken_by_someone_else_is_recomputed() -> None:
    kv = manager(num_blocks=4, block_size=4)
    req = request(list(range(6)))
    compute(kv, req)
    req.all_token_ids.append(42)
    kv.preempt(req)
    other = request(list(range(100, 109)), rid="r1")
    compute(kv, other)  # 3 blocks: the two never used, then req's tail (its cached head stays)
    kv.free(other)
    assert kv.admit(req, token_budget=100) == 3  # its head block hits; the tail's 2 tokens + the new one
    assert req.num_computed_tokens == 4
    kv.check_invariants([req])


def test_pins_keep_blocks_and_export_import_moves_them_by_key() -> None:
    src, dst = manager(num_blocks=8, block_size=4), manager(num_blocks=8, block_size=4)
    req = request(list(range(13)))
    compute(src, req)
    keys = list(req.block_keys)
    src.free(req)
    assert src.pin(keys) == keys
    exports = src.export_blocks(keys)
    assert [e.key for e in exports] == keys
    assert exports[0].parent == root_key(FINGERPRINT)
    writes = dst.import_blocks([(e.key, e.parent, e.tokens) for e in exports])
    assert [i for i, _ in writes] == [0, 1, 2]
    assert dst.import_blocks([(e.key, e.parent, e.tokens) for e in exports]) == []  # already cached
    assert dst.lookup(list(range(13)), root_key(FINGERPRINT)) == 12
    src.unpin(keys)
    src.check_invariants([])
    dst.check_invariants([])
    forged = (exports[1].key, exports[1].parent, (9, 9, 9, 9))
    with pytest.raises(InvalidRequestError, match="key does not match"):
        dst.import_blocks([forged])
    with pytest.raises(InvalidRequestError, match="unpin of a key that is not pinned"):
        src.unpin(keys)


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(1, 14), st.integers(0, 3)),
            st.tuples(st.just("compute"), st.integers(0, 9), st.integers(1, 6)),
            st.tuples(st.just("preempt"), st.integers(0, 9)),
            st.tuples(st.just("free"), st.integers(0, 9)),
        ),
        max_size=40,
    )
)
def test_block_accounting_holds_under_random_operations(ops: list[tuple]) -> None:
    kv = manager(num_blocks=10, block_size=2, groups=2)
    live: list[Request] = []
    waiting: list[Request] = []
    for n, op in enumerate(ops):
        if op[0] == "add":
            req = request([op[2]] * op[1], rid=f"r{n}", order=n)
            if kv.admit(req, token_budget=4) is not None:
                live.append(req)
        elif op[0] == "compute" and live:
            req = live[op[1] % len(live)]
            target = min(req.num_tokens, req.num_computed_tokens + op[2])
            if kv.can_grow(req, target + 1):
                kv.grow(req, target + 1)
                req.num_computed_tokens = target
                kv.register_computed(req)
                if target == req.num_tokens:
                    req.all_token_ids.append(op[2])
        elif op[0] == "preempt" and live:
            req = live.pop(op[1] % len(live))
            kv.preempt(req)
            waiting.append(req)
        elif op[0] == "free" and (live or waiting):
            pool = live if live else waiting
            kv.free(pool.pop(op[1] % len(pool)))
        if waiting and op[0] != "preempt":
            req = waiting[0]
            if kv.admit(req, token_budget=4) is not None:
                live.append(waiting.pop(0))
        kv.check_invariants(live)
    for req in live + waiting:
        kv.free(req)
    kv.check_invariants([])
    assert kv.num_free_blocks == kv.num_blocks
