"""OmniAttn's compressed layer groups in the KV manager: a decoding request holds only its sink and
window blocks there (memory given back, not masked), only prompt blocks are shared, a prefix hit
works when a compressed group lost the middle blocks, pins and exports keep and send only what a
receiver keeps, pool sizes follow the stated rule, and block accounting holds under random
operations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.kv_cache import KVCacheManager, LayerGroup, root_key
from edgecloud.llm.kv_cache.layer_group import pool_sizes
from edgecloud.llm.omniattn.pattern import LayerPattern
from edgecloud.llm.request import EngineCoreRequest
from edgecloud.llm.request_state import Request
from edgecloud.llm.sampling_params import SamplingParams

FINGERPRINT = b"model-a"
BS = 4
SINK, WINDOW = 1, 2


def manager(full_blocks: int = 32, compressed_blocks: int = 32) -> KVCacheManager:
    groups = [LayerGroup("full", (0, 2)), LayerGroup("sw", (1, 3), "sink_window", SINK, WINDOW)]
    return KVCacheManager(groups, [full_blocks, compressed_blocks], BS, FINGERPRINT)


def request(tokens: list[int], rid: str = "r0", order: int = 0) -> Request:
    core = EngineCoreRequest(request_id=rid, prompt_token_ids=tokens, params=SamplingParams(), arrival_time=0.0)
    return Request.from_core_request(core, order, 2)


def step(kv: KVCacheManager, req: Request, num_new: int) -> None:
    """One scheduled chunk as the scheduler runs it: grow, compute, key, append a sampled token."""
    target = req.num_computed_tokens + num_new
    assert kv.can_grow(req, target)
    kv.grow(req, target)
    req.num_computed_tokens = target
    kv.register_computed(req)
    if target == req.num_tokens:
        req.all_token_ids.append(7)


def prefill(kv: KVCacheManager, req: Request) -> None:
    admitted = kv.admit(req, token_budget=10_000)
    assert admitted is not None
    req.num_computed_tokens += admitted
    kv.register_computed(req)
    req.all_token_ids.append(7)


def held(req: Request, group: int = 1) -> list[int]:
    return [i for i, block in enumerate(req.block_tables[group]) if block >= 0]


def test_a_decoding_request_holds_only_its_sink_and_window_and_gives_the_rest_back() -> None:
    kv = manager()
    req = request(list(range(100, 141)))  # 41 tokens: 11 blocks
    prefill(kv, req)
    assert held(req) == list(range(11))  # prefill is full attention: every prompt block held
    free_before = kv.pools[1].num_free
    step(kv, req, 1)  # first decode: token 41 in block 10; window = blocks 9, 10
    assert held(req) == [0, 9, 10]
    assert kv.pools[1].num_free == free_before + 8  # memory really given back
    assert held(req, group=0) == list(range(11))  # full layers keep everything
    for _ in range(13):
        step(kv, req, 1)
    last = (req.num_computed_tokens) // BS
    assert held(req) == [0, last - 1, last]
    assert len(held(req)) <= SINK + WINDOW
    kv.check_invariants([req])
    kv.free(req)
    kv.check_invariants([])
    assert kv.num_free_blocks == kv.num_blocks


def test_only_prompt_blocks_are_shared_when_a_group_is_compressed() -> None:
    kv = manager()
    req = request(list(range(10)))  # 2 full prompt blocks
    prefill(kv, req)
    for _ in range(12):
        step(kv, req, 1)
    # blocks 2.. hold decoded tokens, computed under compression: private
    assert len(req.block_keys) == 2
    full_only = KVCacheManager([LayerGroup("full", (0, 1))], 32, BS, FINGERPRINT)
    other = request(list(range(10)))
    prefill(full_only, other)
    for _ in range(12):
        step(full_only, other, 1)
    assert len(other.block_keys) == 5  # all full layers: decoded blocks are shared as before


def test_a_prefix_hit_works_when_the_compressed_group_lost_the_middle_blocks() -> None:
    kv = manager(full_blocks=32, compressed_blocks=14)
    prompt = list(range(200, 241))  # 10 full blocks + 1 token
    a = request(prompt, "a")
    prefill(kv, a)
    step(kv, a, 1)  # a decodes: its middle blocks go back to the compressed pool (still cached)
    root = root_key(FINGERPRINT)
    assert kv.lookup(prompt, root) == 40  # nothing evicted yet: a full hit
    filler = request(list(range(500, 540)), "filler", 1)  # takes every free compressed block
    prefill(kv, filler)
    kv.free(filler)  # its blocks now sit after a's in the free queue; a's middle ones were evicted
    b = request([*prompt, 1, 2, 3], "b", 2)
    assert kv.lookup(prompt, root) == 40  # sink + window ending at block 10 are still there
    admitted = kv.admit(b, token_budget=100)
    assert b.num_computed_tokens == 40 and admitted == 4
    table = b.block_tables[1]
    assert table[0] >= 0 and table[8] >= 0 and table[9] >= 0 and -1 in table[1:8]
    assert all(block >= 0 for block in b.block_tables[0])  # full layers need the whole prefix
    kv.check_invariants([a, b])


def test_a_hit_ends_where_a_compressed_group_still_holds_the_sink_and_a_whole_window() -> None:
    kv = manager(full_blocks=32, compressed_blocks=13)
    prompt = list(range(200, 241))
    a = request(prompt, "a")
    prefill(kv, a)
    kv.free(a)  # every full prompt block cached; freed last block first, so the sink is evicted last
    prefill(kv, request(list(range(600, 620)), "x", 1))  # takes 5 compressed blocks: a's blocks 9 and 8
    # n = 10 or 9 would need block 8 or 9 in the window; n = 8 has its window (6, 7) and the sink
    assert kv.lookup(prompt, root_key(FINGERPRINT)) == 32


def test_pins_and_exports_keep_and_send_only_what_the_receiver_keeps() -> None:
    src, dst = manager(), manager()
    prompt = list(range(300, 341))  # 10 full blocks
    req = request(prompt)
    prefill(src, req)
    keys = src.pin(list(req.block_keys))
    assert keys == req.block_keys
    src.free(req)
    exports = src.export_blocks(keys)
    assert [e.key for e in exports] == keys
    sent = [i for i, e in enumerate(exports) if e.block_ids[1] >= 0]
    assert sent == [0, 7, 8, 9]  # the sink and the last window + 1 blocks
    assert all(e.block_ids[0] >= 0 for e in exports)
    present = [(True, e.block_ids[1] >= 0) for e in exports]
    writes = dst.import_blocks([(e.key, e.parent, e.tokens) for e in exports], present)
    assert len(writes) == 10 and [ids[1] >= 0 for _, ids in writes] == [i in sent for i in range(10)]
    assert dst.lookup(prompt, root_key(FINGERPRINT)) == 40
    # the receiver's request (the prompt again, recomputing its last token) starts from the hit
    b = request(prompt, "b")
    assert dst.admit(b, token_budget=100) == 1 and b.num_computed_tokens == 40
    src.unpin(keys)
    src.check_invariants([])
    dst.check_invariants([b])


def test_a_key_pinned_by_two_chains_is_released_in_compressed_groups_exactly_once() -> None:
    kv = manager()
    req = request(list(range(41)))
    prefill(kv, req)
    chain = list(req.block_keys)
    kv.free(req)
    long_pin = kv.pin(chain)  # block 3 is in the middle: not kept by the compressed group
    short_pin = kv.pin(chain[:5])  # block 3 is in this chain's window
    for order in ([long_pin, short_pin], [short_pin, long_pin]):
        kv.unpin(order[0])
        kv.check_invariants([])
        kv.unpin(order[1])
        kv.check_invariants([])
        kv.pin(chain)
        kv.pin(chain[:5])
    with pytest.raises(InvalidRequestError, match="unpin of a key that is not pinned"):
        kv.unpin([b"\x00" * 32])


def test_pool_sizes_follow_omniattns_fifth_with_a_longest_prompt_floor() -> None:
    groups = LayerPattern.compressing(30, set(range(16))).layer_groups()
    full, compressed = groups[0], groups[1]
    assert len(full.layers) == 14 and compressed.compressed
    # plenty of memory: a compressed pool is a fifth of a full one
    sizes = pool_sizes(groups, 300_000, 0.2, 512)
    assert sizes[1] == -(-sizes[0] // 5) and 14 * sizes[0] + 16 * sizes[1] <= 300_000
    # little memory: the compressed pool still holds one longest prompt
    sizes = pool_sizes(groups, 21_845, 0.2, 512)
    assert sizes[1] == 512 and sizes[0] == (21_845 - 16 * 512) // 14
    # too little for that: every pool alike, as with full KV
    assert pool_sizes(groups, 6_000, 0.2, 512) == [200, 200]
    assert pool_sizes([LayerGroup("f", (0, 1))], 100, 0.2, 512) == [50]


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(1, 30), st.integers(0, 3)),
            st.tuples(st.just("step"), st.integers(0, 9), st.integers(1, 6)),
            st.tuples(st.just("preempt"), st.integers(0, 9)),
            st.tuples(st.just("free"), st.integers(0, 9)),
            st.tuples(st.just("pin"), st.integers(0, 9)),
            st.tuples(st.just("unpin"), st.integers(0, 9)),
        ),
        max_size=40,
    )
)
def test_block_accounting_holds_with_compressed_groups_under_random_operations(ops: list[tuple]) -> None:
    kv = manager(full_blocks=24, compressed_blocks=12)
    live: list[Request] = []
    waiting: list[Request] = []
    pinned: list[list[bytes]] = []
    for n, op in enumerate(ops):
        if op[0] == "add":
            req = request([op[2]] * op[1], rid=f"r{n}", order=n)
            if kv.admit(req, token_budget=8) is not None:
                live.append(req)
            else:
                waiting.append(req)
        elif op[0] == "step" and live:
            req = live[op[1] % len(live)]
            target = min(req.num_tokens, req.num_computed_tokens + op[2])
            if target > req.num_computed_tokens and kv.can_grow(req, target):
                step(kv, req, target - req.num_computed_tokens)
                if req.num_computed_tokens > req.num_prompt_tokens:
                    assert len(held(req)) <= SINK + WINDOW
        elif op[0] == "preempt" and live:
            req = live.pop(op[1] % len(live))
            kv.preempt(req)
            waiting.append(req)
        elif op[0] == "free" and (live or waiting):
            source = live if live else waiting
            kv.free(source.pop(op[1] % len(source)))
        elif op[0] == "pin" and live:
            pinned.append(kv.pin(list(live[op[1] % len(live)].block_keys)))
        elif op[0] == "unpin" and pinned:
            kv.unpin(pinned.pop(op[1] % len(pinned)))
        if waiting and op[0] != "preempt":
            req = waiting[0]
            admitted = kv.admit(req, token_budget=8)
            if admitted is not None:
                live.append(waiting.pop(0))
        kv.check_invariants(live)
    for req in live + waiting:
        kv.free(req)
    for keys in pinned:
        kv.unpin(keys)
    kv.check_invariants([])
    assert all(pool.num_free == pool.num_blocks for pool in kv.pools)
