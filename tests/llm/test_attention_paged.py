"""The dense paged decode backend against a direct per-sequence softmax attention."""

from __future__ import annotations

import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.llm.attention import DecodeBatch, PagedDecodeAttention, cpu_kernels, paged
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
    group=st.sampled_from([1, 4, 9]),
    head_dim=st.sampled_from([8, 16, 64]),
    seed=st.integers(0, 1000),
    chunk_bytes=st.sampled_from([paged.CPU_CHUNK_BYTES, 1, 4096]),
    kernel=st.booleans(),
)
def test_paged_decode_matches_reference(
    lens: list[int], block_size: int, kv_heads: int, group: int, head_dim: int, seed: int, chunk_bytes: int,
    kernel: bool,
) -> None:
    """Both CPU paths: the C kernel reading K/V in place, and the torch gather + SDPA path, also
    with its row chunks forced small (one row per SDPA call at 1 byte, or a few). The kernel's
    vector path takes head sizes that are multiples of 16 (on AVX-512), its generic one the rest;
    9 query heads a KV head leave a partial group of eight."""
    gen = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-n // block_size) for n in lens) + 3
    k_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, head_dim, generator=gen)
    free = torch.randperm(num_blocks, generator=gen).tolist()
    tables = [[free.pop() for _ in range(-(-n // block_size))] for n in lens]
    query = torch.randn(len(lens), kv_heads * group, head_dim, generator=gen)
    backend = PagedDecodeAttention()
    saved, paged.CPU_CHUNK_BYTES = paged.CPU_CHUNK_BYTES, chunk_bytes
    saved_kernel = cpu_kernels.paged_decode
    if not kernel:
        cpu_kernels.paged_decode = lambda *args: None  # type: ignore[assignment]
    try:
        got = backend.forward(backend.plan(DecodeBatch(tables, lens, block_size)), query, k_cache, v_cache, 0.3)
    finally:
        paged.CPU_CHUNK_BYTES = saved
        cpu_kernels.paged_decode = saved_kernel
    want = reference(query, k_cache, v_cache, tables, lens, block_size, 0.3)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_length_groups_cover_every_row_once_and_split_far_apart_lengths() -> None:
    lens = [1000, 990, 20, 1010, 25, 30]
    groups = group_by_length(lens, overhead=64)
    assert sorted(r for g in groups for r in g) == list(range(len(lens)))
    assert {frozenset(g) for g in groups} == {frozenset({0, 1, 3}), frozenset({2, 4, 5})}
    assert group_by_length([5, 5, 5], overhead=64) == [[0, 1, 2]]


def test_the_cpu_kernel_builds_here_and_reads_shared_blocks_in_place() -> None:
    """Where a C compiler is installed (every machine of this project) the kernel must build: a
    silent fallback would hide a broken kernel behind the slower torch path. Sequences share
    their first blocks (prefix caching), lengths end mid-block and on block boundaries."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine: the engine uses the torch path")
    assert cpu_kernels.paged_decode_f32() is not None
    gen = torch.Generator().manual_seed(7)
    block_size, kv_heads, group, head_dim = 16, 3, 3, 64  # SmolLM2's attention shapes
    k_cache = torch.randn(40, block_size, kv_heads, head_dim, generator=gen)
    v_cache = torch.randn(40, block_size, kv_heads, head_dim, generator=gen)
    shared = [3, 17, 5]
    tables = [[*shared, 9], [*shared, 11, 12], shared, [30], [*shared, 20, 21, 22, 23]]
    lens = [49, 80, 48, 1, 112]
    query = torch.randn(len(lens), kv_heads * group, head_dim, generator=gen)
    plan = PagedDecodeAttention().plan(DecodeBatch(tables, lens, block_size))
    got = cpu_kernels.paged_decode(
        query, k_cache, v_cache, plan.block_table, plan.context_lens, plan.max_context, 0.125
    )
    assert got is not None
    torch.testing.assert_close(got, reference(query, k_cache, v_cache, tables, lens, block_size, 0.125),
                               atol=1e-5, rtol=1e-5)
    assert plan._groups is None  # the kernel path never builds the torch path's length groups
    # not float32: the caller's torch path, never a wrong-dtype read
    assert cpu_kernels.paged_decode(query.bfloat16(), k_cache.bfloat16(), v_cache.bfloat16(), plan.block_table,
                                    plan.context_lens, plan.max_context, 0.125) is None
