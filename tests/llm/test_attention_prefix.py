"""PAT prefix-aware decode attention: exact against dense paged attention, on any tree."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgecloud.llm.attention import DECODE_BACKENDS, DecodeBatch, PagedDecodeAttention, make_decode_backend
from edgecloud.llm.attention.cascade import CascadeDecodeAttention
from edgecloud.llm.attention.prefix import PrefixDecodeAttention
from edgecloud.llm.attention.prefix_tree import (
    HeadGeometry,
    PackCostModel,
    Packs,
    block_table_array,
    build_sharing_tree,
    group_by_row_tile,
    shared_prefix_blocks,
    split_long_packs,
)

HEAD_DIM = 8

# cost models that drive the scheduler into each of its paths
COST_MODELS = {
    "default": PackCostModel(),
    "always-join": PackCostModel(pack_overhead_s=1.0),
    "split-everything": PackCostModel(min_split_tokens=1, work_per_thread=1 << 20, group_overhead_s=0.0),
    "tiny-tiles": PackCostModel(max_scores_bytes=1, max_gather_bytes=1),
    "one-group": PackCostModel(group_overhead_s=1.0, max_gather_bytes=1 << 40),
    # the CUDA model's ragged plans (grouped by row tile, length-balanced splits) on the torch path
    "cuda-ragged": PackCostModel.cuda(),
    "cuda-ragged-split": replace(PackCostModel.cuda(), min_split_tokens=1),
}


@dataclass
class Case:
    batch: DecodeBatch
    num_blocks: int


@st.composite
def prefix_trees(draw: st.DrawFn) -> Case:
    """A random sharing tree: every node owns whole blocks, leaves end anywhere in a block;
    some sequences end exactly at an inner node (their whole context is shared)."""
    block_size = draw(st.sampled_from([1, 2, 4, 16]))
    pool = list(range(draw(st.integers(0, 3)), 10_000))
    random.Random(draw(st.integers(0, 2**16))).shuffle(pool)
    tables: list[list[int]] = []
    lens: list[int] = []

    def grow(prefix: list[int], depth: int) -> None:
        own = [pool.pop() for _ in range(draw(st.integers(0 if depth else 1, 3)))]
        path = prefix + own
        children = draw(st.integers(0, 3)) if depth < 3 else 0
        if children == 0 or (path and draw(st.booleans())):
            # a sequence ending here: either on the block boundary or in a fresh partial block
            tail = draw(st.integers(0, 2 * block_size))
            if not path and tail == 0:
                tail = 1
            extra = [pool.pop() for _ in range(-(-tail // block_size))]
            tables.append(path + extra)
            lens.append(len(path) * block_size + tail)
        for _ in range(children):
            grow(path, depth + 1)

    for _ in range(draw(st.integers(1, 3))):
        grow([], 0)
    perm = draw(st.permutations(range(len(tables))))
    tables = [tables[i] + [pool.pop()] * draw(st.integers(0, 1)) for i in perm]  # spare blocks
    lens = [lens[i] for i in perm]
    return Case(DecodeBatch(tables, lens, block_size), max(max(t) for t in tables) + 1)


def _random_inputs(case: Case, q_heads: int, kv_heads: int, seed: int
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shape = (case.num_blocks, case.batch.block_size, kv_heads, HEAD_DIM)
    k_cache = torch.randn(shape, generator=gen)
    v_cache = torch.randn(shape, generator=gen)
    query = torch.randn(case.batch.num_seqs, q_heads, HEAD_DIM, generator=gen)
    return query, k_cache, v_cache


def _dense(case: Case, query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
    paged = PagedDecodeAttention()
    return paged.forward(paged.plan(case.batch), query, k_cache, v_cache, HEAD_DIM ** -0.5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=prefix_trees(), kv_heads=st.sampled_from([1, 2]), group=st.sampled_from([1, 2, 4]),
       cost=st.sampled_from(sorted(COST_MODELS)), parallelism=st.sampled_from([1, 64]),
       seed=st.integers(0, 1000))
def test_prefix_equals_dense_paged_on_any_tree(case: Case, kv_heads: int, group: int, cost: str,
                                               parallelism: int, seed: int) -> None:
    query, k_cache, v_cache = _random_inputs(case, kv_heads * group, kv_heads, seed)
    backend = PrefixDecodeAttention(cost=COST_MODELS[cost], parallelism=parallelism)
    got = backend.forward(backend.plan(case.batch), query, k_cache, v_cache, HEAD_DIM ** -0.5)
    torch.testing.assert_close(got, _dense(case, query, k_cache, v_cache), rtol=0, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(case=prefix_trees(), share=st.booleans(), seed=st.integers(0, 1000))
def test_cascade_and_dense_baselines_equal_paged(case: Case, share: bool, seed: int) -> None:
    query, k_cache, v_cache = _random_inputs(case, 4, 2, seed)
    backend = CascadeDecodeAttention(share_prefix=share, max_gather_tokens=64)
    got = backend.forward(backend.plan(case.batch), query, k_cache, v_cache, HEAD_DIM ** -0.5)
    torch.testing.assert_close(got, _dense(case, query, k_cache, v_cache), rtol=0, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(case=prefix_trees())
def test_tree_nodes_are_exactly_the_shared_prefixes(case: Case) -> None:
    """Each node's queries are the sequences whose tables hold its blocks at its depth."""
    ctx = np.asarray(case.batch.context_lens)
    bs = case.batch.block_size
    table = block_table_array(case.batch.block_tables, ctx, bs)
    shared = shared_prefix_blocks(table, ctx, bs)
    tree = build_sharing_tree(table, shared)
    assert sorted(tree.order.tolist()) == list(range(case.batch.num_seqs))
    for j in range(tree.num_nodes):
        rep = table[tree.order[tree.qlo[j]]]
        path = rep[: tree.end[j]]
        holders = {i for i in range(len(ctx)) if shared[i] >= tree.end[j]
                   and (table[i, : tree.end[j]] == path).all()}
        assert holders == set(tree.order[tree.qlo[j]:tree.qhi[j]].tolist())
        parent = tree.parent[j]
        assert tree.start[j] == (tree.end[parent] if parent >= 0 else 0)
        assert tree.start[j] < tree.end[j]
    # every shared block of every sequence is covered by exactly one node on its path
    for i in range(len(ctx)):
        pos = int(np.flatnonzero(tree.order == i)[0])
        on_path = [j for j in range(tree.num_nodes) if tree.qlo[j] <= pos < tree.qhi[j]]
        assert sum(int(tree.end[j] - tree.start[j]) for j in on_path) == shared[i]


def test_known_tree_and_kv_read_once() -> None:
    # root (3 blocks) shared by all; two children (2 blocks) shared by pairs; private tails
    tables = [[0, 1, 2, 3, 4, 7], [0, 1, 2, 3, 4, 8, 9], [0, 1, 2, 5, 6, 10], [0, 1, 2, 5, 6], [0, 1, 2, 11]]
    lens = [23, 28, 24, 20, 14]
    batch = DecodeBatch(tables, lens, 4)
    ctx = np.asarray(lens)
    table = block_table_array(tables, ctx, 4)
    shared = shared_prefix_blocks(table, ctx, 4)
    assert shared.tolist() == [5, 5, 5, 5, 3]
    tree = build_sharing_tree(table, shared)
    assert list(zip(tree.start.tolist(), tree.end.tolist(), tree.parent.tolist(), strict=True)) == [
        (0, 3, -1), (3, 5, 0), (3, 5, 0)]
    case = Case(batch, 12)
    query, k_cache, v_cache = _random_inputs(case, 4, 2, 0)
    # free merges: every node splits off; free-standing packs priced out: children join the root
    splitting = PackCostModel(bandwidth=float("inf"), pack_overhead_s=0.0, group_overhead_s=0.0)
    for cost, packs in ((splitting, 3 + 4), (COST_MODELS["always-join"], 1 + 4)):
        backend = PrefixDecodeAttention(cost=cost, parallelism=1)
        plan = backend.plan(batch)
        got = backend.forward(plan, query, k_cache, v_cache, HEAD_DIM ** -0.5)
        torch.testing.assert_close(got, _dense(case, query, k_cache, v_cache), rtol=0, atol=1e-5)
        kernel = next(iter(plan.kernels.values()))
        assert kernel.num_packs == packs  # seq 3 has no private tail: 4 leaves
        if cost is splitting:
            # no padding when every shape is its own group; shared blocks read once:
            # 12 + 8 + 8 tokens, then the tails in whole blocks: 4 + 8 + 4 + 0 + 4
            assert kernel.kv_tokens_read == 12 + 8 + 8 + 4 + 8 + 4 + 4 < sum(lens)


def test_ragged_splits_balance_lengths_and_groups_follow_row_tiles() -> None:
    # PAT's tree 1,10_4096,416 with 32 KV heads on a 132-SM GPU: the root is cut to about the
    # fair share of KV per program (all tokens x heads / 4 programs per SM), leaves stay whole
    geom = HeadGeometry(num_kv_heads=32, group=1, head_dim=128, elem_bytes=2)
    rows = np.array([10] + [1] * 10)
    tokens = np.array([4096] + [416] * 10)
    packs = Packs(qlo=np.array([0, *range(10)]), rows=rows, tokens=tokens, piece_pack=np.arange(11),
                  piece_src=np.array([0, *range(10)]), piece_t0=np.array([0] + [4096] * 10), piece_len=tokens,
                  piece_vis_lo=np.zeros(11, dtype=np.int64), piece_vis_hi=np.full(11, 10))
    split = split_long_packs(packs, geom, PackCostModel.cuda(), parallelism=132, block_size=16)
    fair = -(-int(tokens.sum()) * 32 // (4 * 132))
    assert split.num_packs == 9 + 10 and split.tokens.sum() == tokens.sum()
    assert split.tokens.max() <= -(-fair // 16) * 16
    # row tiles: 10 and 1 rows fit a 16-row tile; 80 rows take two 64-row tiles; GQA 4 folds in
    assert [g.tolist() for g in group_by_row_tile(np.array([10, 1, 80, 1]), geom)] == [[0, 1, 3], [2]]
    gqa = HeadGeometry(num_kv_heads=8, group=4, head_dim=128, elem_bytes=2)
    assert [g.tolist() for g in group_by_row_tile(np.array([1, 4, 5, 16, 17]), gqa)] == [[0, 1], [2], [3], [4]]


def test_plan_reuses_the_tree_while_only_tails_grow() -> None:
    backend = PrefixDecodeAttention()
    tables = [[0, 1, 2, 3], [0, 1, 4, 5]]
    backend.plan(DecodeBatch(tables, [13, 13], 4))
    backend.plan(DecodeBatch(tables, [14, 14], 4))
    backend.plan(DecodeBatch([[0, 1, 2, 3, 6], [0, 1, 4, 5, 7]], [17, 17], 4))
    assert (backend.cache_misses, backend.cache_hits) == (1, 2)
    backend.plan(DecodeBatch([[0, 1, 2, 3], [0, 9, 4, 5]], [14, 14], 4))  # sharing changed
    assert backend.cache_misses == 2


def test_bfloat16_follows_dense_within_bf16_precision() -> None:
    case = Case(DecodeBatch([[0, 1, 2], [0, 1, 3], [0, 4]], [11, 12, 6], 4), 5)
    query, k_cache, v_cache = (t.bfloat16() for t in _random_inputs(case, 4, 2, 1))
    backend = PrefixDecodeAttention()
    got = backend.forward(backend.plan(case.batch), query, k_cache, v_cache, HEAD_DIM ** -0.5)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), _dense(case, query, k_cache, v_cache).float(),
                               rtol=0, atol=3e-2)


def test_registered_and_rejects_bad_batches() -> None:
    assert DECODE_BACKENDS["prefix"] is PrefixDecodeAttention
    assert isinstance(make_decode_backend("prefix"), PrefixDecodeAttention)
    backend = PrefixDecodeAttention()
    with pytest.raises(ValueError, match=r"block_tables\[1\] has 1 blocks but context_lens\[1\]=9"):
        backend.plan(DecodeBatch([[0, 1, 2], [3]], [9, 9], 4))
    with pytest.raises(ValueError, match="context_lens must be >= 1"):
        backend.plan(DecodeBatch([[0]], [0], 4))
    empty = torch.zeros(0, 4, HEAD_DIM)
    cache = torch.zeros(1, 4, 2, HEAD_DIM)
    out = backend.forward(backend.plan(DecodeBatch([], [], 4)), empty, cache, cache, 1.0)
    assert out.shape == (0, 4, HEAD_DIM)


@settings(max_examples=25, deadline=None)
@given(case=prefix_trees(), steps=st.integers(1, 6), seed=st.integers(0, 1000))
def test_cached_plans_stay_exact_as_decoding_appends_tokens(case: Case, steps: int, seed: int) -> None:
    """Step after step each sequence appends a token (a fresh block when its last one is full);
    the tree comes from the cache whenever sharing is unchanged, and results stay exact."""
    backend = PrefixDecodeAttention()
    bs = case.batch.block_size
    tables = [list(t) for t in case.batch.block_tables]
    lens = list(case.batch.context_lens)
    fresh = case.num_blocks
    for step in range(steps):
        for i, n in enumerate(lens):
            if n % bs == 0:
                tables[i] = [*tables[i][: n // bs], fresh]
                fresh += 1
            lens[i] = n + 1
        grown = Case(DecodeBatch([list(t) for t in tables], list(lens), bs), fresh)
        query, k_cache, v_cache = _random_inputs(grown, 4, 2, seed + step)
        got = backend.forward(backend.plan(grown.batch), query, k_cache, v_cache, HEAD_DIM ** -0.5)
        torch.testing.assert_close(got, _dense(grown, query, k_cache, v_cache), rtol=0, atol=1e-5)
