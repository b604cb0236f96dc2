"""The dense paged decode backend against a direct per-sequence softmax attention."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.llm.attention import DecodeBatch, PagedDecodeAttention, paged
from edgecloud.llm.attention.paged import group_by_length


def reference(query, k_cache, v_cache, tables, lens, block_size, scale):  # type: ignore[no-untyped-def]
    out = []
    for row, (table, n) in enumerate(zip(tables, lens, strict=True)):
        slots = torch.tensor([table[p // block_size] * block_size + p % block_size for p in range(n)])
        k = k_cache.flatten(0, 1)[slots]
        v = v_cache.flatten(0, 1)[slots]
        group = query.shape[1] // k.shape[1]
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        probs = torch.softmax(torch.einsum("hd,lhd->hl", query[row], k) * scale, dim=-1)
        out.append(torch.einsum("hl,lhd->hd", probs, v))
    return torch.stack(out)


@settings(max_examples=30, deadline=None)
@given(
    lens=st.lists(st.integers(1, 70), min_size=1, max_size=12),
    block_size=st.sampled_from([1, 4, 16]),
    kv_heads=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 4]),
    seed=st.integers(0, 1000),
    chunk_bytes=st.sampled_from([paged.CPU_CHUNK_BYTES, 1, 4096]),
)
def test_paged_decode_matches_reference(
    lens: list[int], block_size: int, kv_heads: int, group: int, seed: int, chunk_bytes: int
) -> None:
    """Also with the CPU's row chunks forced small: one row per SDPA call (1 byte), or a few."""
    gen = torch.Generator().manual_seed(seed)
    head_dim = 8
    num_blocks = sum(-(-n // block_size) for n in lens) + 3
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen)
    free = torch.randperm(num_blocks, generator=gen).tolist()
    tables = [[free.pop() for _ in range(-(-n // block_size))] for n in lens]
    query = torch.randn(len(lens), kv_heads * group, head_dim, generator=gen)
    backend = PagedDecodeAttention()
    saved, paged.CPU_CHUNK_BYTES = paged.CPU_CHUNK_BYTES, chunk_bytes
    try:
        got = backend.forward(backend.plan(DecodeBatch(tables, lens, block_size)), query, k_cache, v_cache, 0.3)
    finally:
        paged.CPU_CHUNK_BYTES = saved
    want = reference(query, k_cache, v_cache, tables, lens, block_size, 0.3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_length_groups_cover_every_row_once_and_split_far_apart_lengths() -> None:
    lens = [1000, 990, 20, 1010, 25, 30]
    groups = group_by_length(lens, overhead=64)
    assert sorted(r for g in groups for r in g) == list(range(len(lens)))
    assert {frozenset(g) for g in groups} == {frozenset({0, 1, 3}), frozenset({2, 4, 5})}
    assert group_by_length([5, 5, 5], overhead=64) == [[0, 1, 2]]
