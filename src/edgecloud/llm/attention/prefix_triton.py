"""PAT's forward stage as a Triton kernel for CUDA (arXiv 2511.22333, §4.3): one program per pack.

The CPU path (``packed.py``) runs a tile group as batched matrix products over gathered blocks.
On a GPU the pack is the unit of a thread block instead, as in the paper: program ``(pack, kv
head, row block)`` loads the queries of the pack that belong to one KV head (the GQA query heads
folded into the rows, so every KV element it loads serves ``rows × group`` queries), walks the
pack's own KV length (``pack_tokens``: packs of one launch may differ in length, none reads
another's padding) through the paged block table ``BLOCK_N`` tokens at a time without gathering
it, and keeps an online softmax (running max, running sum, rescaled accumulator). It writes each
row's partial output and log-sum-exp; the merge is ``packed.combine_partials`` (torch index
reductions, which run on CUDA as they do on the CPU).

The pack plan is PAT's own (``PackedPlan``), priced for this kernel by ``PackCostModel.cuda()``:
packs grouped by row tile only, long packs cut to a fair share of KV per program;
``triton_plan`` only turns each tile group's tensors into the flat form the kernel reads.

Importing this module imports Triton, so nothing on the CPU path imports it: the prefix backend
loads it only for CUDA queries (``prefix.py``), and the test runs it in Triton's interpreter
(``TRITON_INTERPRET=1``), which executes the same kernel on CPU tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from edgecloud.llm.attention.packed import PackedPlan, TileGroup, combine_partials
from edgecloud.llm.attention.prefix_tree import MAX_TILE_ROWS

# KV tokens per loop iteration. Half types: 64, several paged blocks' loads in flight (on an H200
# this halved the two- and three-level trees' time against 16-token steps). float32: 16, since its
# 64-token tiles next to 64-row tiles ran up to 8x slower there (docs/pat.md, "GPU / Triton").
BLOCK_N_HALF = 64
BLOCK_N_FLOAT32 = 16


@dataclass
class TritonTile:
    """One tile group in the kernel's layout."""

    num_packs: int
    rows: int
    blocks: int
    q_index: torch.Tensor  # [Hkv * P * rows] int32 rows of query.view(B * Hkv, group * D)
    block_index: torch.Tensor  # [P * blocks] int32 physical block ids
    hidden: torch.Tensor | None  # [P, rows, blocks * block_size] uint8, 1 = masked score
    keep: torch.Tensor | None  # indices into P * rows of the real (not padding) rows
    pack_tokens: torch.Tensor  # [P] int32 KV tokens each pack's programs walk


@dataclass
class TritonPackedPlan:
    tiles: list[TritonTile]
    entry_query: torch.Tensor
    single_entry: bool


def triton_plan(plan: PackedPlan, block_size: int) -> TritonPackedPlan:
    """The kernel's view of a PAT plan: built once per step and head geometry, reused by every layer."""
    return TritonPackedPlan([_triton_tile(tile, block_size) for tile in plan.groups], plan.entry_query,
                            plan.single_entry)


def _triton_tile(tile: TileGroup, block_size: int) -> TritonTile:
    if tile.pack_tokens is not None:
        pack_tokens = tile.pack_tokens.to(torch.int32)
    else:  # a plan made for padded tiles: every pack walks the whole padded width (padding masked)
        pack_tokens = torch.full((tile.num_packs,), tile.blocks * block_size, dtype=torch.int32,
                                 device=tile.block_index.device)
    hidden = None
    if tile.hidden is not None:
        # [1, P, rows or 1, 1, width] -> one byte per (pack, row, token)
        width = tile.hidden.shape[-1]
        hidden = tile.hidden.expand(1, tile.num_packs, tile.rows, 1, width).reshape(
            tile.num_packs, tile.rows, width).to(torch.uint8).contiguous()
    return TritonTile(
        num_packs=tile.num_packs,
        rows=tile.rows,
        blocks=tile.blocks,
        q_index=tile.q_index.to(torch.int32),
        block_index=tile.block_index.to(torch.int32),
        hidden=hidden,
        keep=tile.keep,
        pack_tokens=pack_tokens,
    )


def run_packed_triton(plan: TritonPackedPlan, query: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, scale: float) -> torch.Tensor:
    """Decode attention of ``query`` [B, Hq, D] over the paged cache [blocks, block_size, Hkv, D]."""
    num_seqs = query.shape[0]
    if num_seqs == 0:
        return query.new_empty(query.shape)
    if k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1:
        raise ValueError("k_cache and v_cache must be contiguous in head_dim")
    query = query.contiguous()
    partials = [pack_attention(tile, query, k_cache, v_cache, scale) for tile in plan.tiles]
    return combine_partials(partials, plan.entry_query, plan.single_entry, num_seqs).to(query.dtype)


def pack_attention(tile: TritonTile, query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial attention of every pack of the tile: (output [entries, Hq, D], lse [entries, Hq]),
    float32, one entry per real query row of each pack."""
    _, num_q_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    group = num_q_heads // num_kv_heads
    row_tile = tile.rows * group
    block_m = min(MAX_TILE_ROWS, max(16, triton.next_power_of_2(row_tile)))
    entries = tile.num_packs * tile.rows
    out = torch.empty((entries, num_q_heads, head_dim), dtype=torch.float32, device=query.device)
    lse = torch.empty((entries, num_q_heads), dtype=torch.float32, device=query.device)
    grid = (tile.num_packs, num_kv_heads, triton.cdiv(row_tile, block_m))
    hidden = tile.hidden if tile.hidden is not None else tile.block_index  # unread when HAS_MASK=False
    _pack_attention_kernel[grid](
        query, k_cache, v_cache, tile.q_index, tile.block_index, tile.pack_tokens, hidden, out, lse,
        scale, tile.num_packs, tile.rows, tile.blocks,
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_SIZE=block_size, BLOCK_M=block_m,
        BLOCK_N=BLOCK_N_FLOAT32 if k_cache.dtype == torch.float32 else BLOCK_N_HALF,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        HAS_MASK=tile.hidden is not None,
        # float32: exact products, not TF32's 10-bit mantissa; half types: tensor cores as they are
        PRECISION="ieee" if k_cache.dtype == torch.float32 else "tf32",
    )
    if tile.keep is not None:
        out = out.index_select(0, tile.keep)
        lse = lse.index_select(0, tile.keep)
    return out, lse


@triton.jit
def _pack_attention_kernel(
    q_ptr, k_ptr, v_ptr, q_index_ptr, block_index_ptr, pack_tokens_ptr, hidden_ptr, out_ptr, lse_ptr,
    scale, num_packs, rows, blocks,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HAS_MASK: tl.constexpr, PRECISION: tl.constexpr,
):
    pack = tl.program_id(0)
    head = tl.program_id(1)
    num_kv_heads = tl.num_programs(1)
    # tile row m is query row m // GROUP of the pack, query head head * GROUP + m % GROUP
    m = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = m < rows * GROUP
    row = m // GROUP
    sub = m % GROUP
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM

    q_row = tl.load(q_index_ptr + (head * num_packs + pack) * rows + row, mask=row_ok, other=0).to(tl.int64)
    q = tl.load(q_ptr + (q_row * GROUP + sub)[:, None] * HEAD_DIM + d[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)

    running_max = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    width = blocks * BLOCK_SIZE  # the group's padded width: the row stride of the mask
    length = tl.load(pack_tokens_ptr + pack)  # this pack's own KV: nothing past it is read
    for start in range(0, length, BLOCK_N):
        t = start + tl.arange(0, BLOCK_N)
        t_ok = t < length
        # read through the block table: no gathered copy of the segment
        physical = tl.load(block_index_ptr + pack * blocks + t // BLOCK_SIZE, mask=t_ok, other=0).to(tl.int64)
        slot = t % BLOCK_SIZE
        kv_ok = t_ok[:, None] & d_ok[None, :]
        k = tl.load(k_ptr + (physical * stride_kb + slot * stride_ks + head * stride_kh)[:, None] + d[None, :],
                    mask=kv_ok, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        visible = row_ok[:, None] & t_ok[None, :]
        if HAS_MASK:
            masked = tl.load(hidden_ptr + (pack * rows + row)[:, None] * width + t[None, :], mask=visible, other=1)
            visible = visible & (masked == 0)
        scores = tl.where(visible, scores, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(scores, axis=1))
        # a row that has seen nothing yet keeps max -inf; shift by 0 so exp gives 0, not NaN
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        probs = tl.exp(scores - shift[:, None])
        rescale = tl.exp(running_max - shift)
        running_sum = running_sum * rescale + tl.sum(probs, axis=1)
        v = tl.load(v_ptr + (physical * stride_vb + slot * stride_vs + head * stride_vh)[:, None] + d[None, :],
                    mask=kv_ok, other=0.0)
        acc = acc * rescale[:, None] + tl.dot(probs.to(v.dtype), v, input_precision=PRECISION)
        running_max = new_max

    seen = running_sum > 0.0
    safe_sum = tl.where(seen, running_sum, 1.0)
    out = acc / safe_sum[:, None]  # a row that sees nothing: output 0
    lse = tl.where(seen, running_max + tl.log(safe_sum), float("-inf"))  # weight 0 in the merge
    entry = (pack * rows + row) * (num_kv_heads * GROUP) + head * GROUP + sub
    tl.store(out_ptr + entry[:, None] * HEAD_DIM + d[None, :], out, mask=row_ok[:, None] & d_ok[None, :])
    tl.store(lse_ptr + entry, lse, mask=row_ok)
