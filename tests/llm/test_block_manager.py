"""Prefix-cache bookkeeping: hits, eviction order, and what a fresh block may overwrite."""

from __future__ import annotations

from edgecloud.llm.block_manager import BlockManager
from edgecloud.llm.outputs import RequestMetrics
from edgecloud.llm.sampling_params import SamplingParams
from edgecloud.llm.sequence import Request, Sequence


def seq(tokens: list[int], seq_id: int = 0) -> Sequence:
    request = Request(f"r{seq_id}", None, list(tokens), SamplingParams(), 0, RequestMetrics(0.0))
    return Sequence(seq_id, request, 0, list(tokens), detokenizer=None, generator=None)  # type: ignore[arg-type]


def compute(bm: BlockManager, s: Sequence) -> None:
    """Admits the whole prompt and marks it computed, as a finished prefill would."""
    assert bm.admit(s, token_budget=10_000) is not None
    s.num_computed_tokens = s.num_tokens
    bm.register_computed(s)


def test_second_prompt_reuses_full_blocks_but_always_computes_its_last_token() -> None:
    bm = BlockManager(num_blocks=8, block_size=4)
    first = seq(list(range(12)))
    compute(bm, first)
    bm.release(first)
    same = seq(list(range(12)), seq_id=1)
    assert bm.admit(same, token_budget=100) == 4  # blocks 0-1 hit; the last block is recomputed
    assert same.num_computed_tokens == 8
    assert bm.prefix_hits == 8 and bm.prefix_queries == 24
    bm.check_invariants([same])


def test_unreferenced_cached_blocks_are_evicted_last_and_least_recently_freed_first() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    old, new = seq([1, 2, 3, 4, 9]), seq([5, 6, 7, 8, 9], seq_id=1)
    compute(bm, old)  # 3 blocks: two full (cached), one partial
    bm.release(old)
    compute(bm, new)  # reuses old's uncached tail block first, then evicts old's cached blocks
    bm.release(new)
    again = seq([5, 6, 7, 8, 0], seq_id=2)
    assert bm.admit(again, token_budget=100) == 1  # new's blocks survived: both full blocks hit
    bm.check_invariants([again])
    assert old.block_hashes == []  # released sequences keep no hashes
    assert sum(b.hash is not None for b in bm.blocks) == 3  # old's head block + new's two are cached


def test_a_block_with_a_colliding_hash_but_other_tokens_is_not_reused() -> None:
    bm = BlockManager(num_blocks=4, block_size=2)
    first = seq([1, 2, 3])
    compute(bm, first)
    block_id = first.block_table[0]
    bm.blocks[block_id].tokens = (7, 7)  # as if another prefix had hashed to the same value
    other = seq([1, 2, 3], seq_id=1)
    assert bm.admit(other, token_budget=100) == 3
    assert other.block_table[0] != block_id
