"""Packed partial attention and the log-sum-exp merge: PAT's forward and merge stages (§4.3–4.4).

A *pack* is a set of queries and a list of KV blocks they all attend to. Packs of one padded
shape form a ``TileGroup``, which runs as one block gather and, per KV head, two batched matrix
products over all packs and all their queries at once; the GQA query heads of a KV head are
folded into the rows of its tile, so the KV is read once for all of them. Every pack yields a
partial output and its log-sum-exp per query; ``run_packed`` merges them per query with
max-shifted weights (the online-softmax merge), vectorised with index reductions.

This module is shared by the prefix-aware backend and by the cascade/dense baselines, so that
the benchmark compares what is read and how it is scheduled, not two kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TileGroup:
    """``num_packs`` packs of at most ``rows`` queries each against ``blocks`` KV blocks each."""

    num_packs: int
    rows: int
    blocks: int
    q_index: torch.Tensor  # [Hkv * P * rows] rows of query.view(B * Hkv, group * D), head-major
    block_index: torch.Tensor  # [P * blocks] physical block ids (padding: any valid block)
    hidden: torch.Tensor | None  # [1, P, rows, 1, blocks * block_size] True = masked score
    keep: torch.Tensor | None  # indices into P * rows of the real (not padding) rows
    pack_tokens: torch.Tensor | None = None  # [P] each pack's own KV length (a ragged kernel reads no more)


@dataclass
class PackedPlan:
    """Everything a forward needs for one head geometry."""

    groups: list[TileGroup]
    entry_query: torch.Tensor  # [entries] batch index of each partial result, groups in order
    single_entry: bool  # every query has exactly one partial result: the merge is a permutation
    num_packs: int
    kv_tokens_read: int  # block padding included


def make_tile_group(rows_batch_index: np.ndarray, real_rows: np.ndarray, blocks: np.ndarray,
                    hidden: np.ndarray | None, num_kv_heads: int, device: torch.device,
                    pack_tokens: np.ndarray | None = None) -> TileGroup:
    """``rows_batch_index`` [P, rows]: the batch query of each row (padding rows repeat a real one);
    ``real_rows`` [P, rows]; ``blocks`` [P, nblk]; ``hidden`` [P, rows or 1, nblk * block_size]."""
    p, rows = rows_batch_index.shape
    heads = np.arange(num_kv_heads, dtype=np.int64)
    q_index = (rows_batch_index[None, :, :] * num_kv_heads + heads[:, None, None]).reshape(-1)
    keep = None if real_rows.all() else np.flatnonzero(real_rows.reshape(-1))
    return TileGroup(
        num_packs=p,
        rows=rows,
        blocks=blocks.shape[1],
        q_index=torch.from_numpy(q_index).to(device),
        block_index=torch.from_numpy(np.ascontiguousarray(blocks.reshape(-1))).to(device),
        hidden=None if hidden is None else torch.from_numpy(
            np.ascontiguousarray(hidden[None, :, :, None, :])).to(device),
        keep=None if keep is None else torch.from_numpy(keep).to(device),
        pack_tokens=None if pack_tokens is None else torch.from_numpy(np.ascontiguousarray(pack_tokens)).to(device),
    )


def run_packed(plan: PackedPlan, query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               scale: float) -> torch.Tensor:
    num_seqs, num_q_heads, head_dim = query.shape
    if num_seqs == 0:
        return query.new_empty(query.shape)
    num_kv_heads = k_cache.shape[2]
    q_rows = query.reshape(num_seqs * num_kv_heads, (num_q_heads // num_kv_heads) * head_dim)
    group = num_q_heads // num_kv_heads
    partials = [_tile_attention(tile, q_rows, k_cache, v_cache, scale, group) for tile in plan.groups]
    return combine_partials(partials, plan.entry_query, plan.single_entry, num_seqs).to(query.dtype)


def combine_partials(partials: list[tuple[torch.Tensor, torch.Tensor]], entry_query: torch.Tensor,
                     single_entry: bool, num_seqs: int) -> torch.Tensor:
    """Each query's attention from the tile groups' (partial output, lse) pairs, in plan order:
    a permutation when every query has one partial, else the log-sum-exp merge."""
    outs = [out for out, _ in partials]
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    if single_entry:
        merged = torch.empty_like(out)
        merged[entry_query] = out
        return merged
    lses = [lse for _, lse in partials]
    lse = lses[0] if len(lses) == 1 else torch.cat(lses)
    return merge_partials(out, lse, entry_query, num_seqs)


def _tile_attention(tile: TileGroup, q_rows: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    scale: float, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial attention of every pack of the group: (output [entries, Hq, D], lse [entries, Hq])."""
    _, block_size, hkv, d = k_cache.shape
    p, rg, width = tile.num_packs, tile.rows * group, tile.blocks * block_size
    q = q_rows.index_select(0, tile.q_index).view(hkv, p, rg, d)
    # whole blocks are contiguous in the cache: one copy per block, then per-head strided views
    keys = k_cache.index_select(0, tile.block_index).view(p, width, hkv, d)
    scores = q.new_empty((hkv, p, rg, width))
    for h in range(hkv):
        torch.bmm(q[h], keys[:, :, h, :].transpose(1, 2), out=scores[h])
    del keys
    scores = scores.float().mul_(scale)
    if tile.hidden is not None:
        scores.view(hkv, p, tile.rows, group, width).masked_fill_(tile.hidden, float("-inf"))
    peak = scores.amax(dim=-1, keepdim=True)
    if tile.hidden is not None:
        # a row that sees nothing in this pack (a joined node's blocks are hidden from it)
        peak.masked_fill_(peak == float("-inf"), 0.0)
    probs = scores.sub_(peak).exp_()
    denom = probs.sum(dim=-1, keepdim=True)
    values = v_cache.index_select(0, tile.block_index).view(p, width, hkv, d)
    probs = probs.to(values.dtype)
    out = values.new_empty((hkv, p, rg, d))
    for h in range(hkv):
        torch.bmm(probs[h], values[:, :, h, :], out=out[h])
    del values
    out = out.float()
    out.div_(denom.clamp_min(torch.finfo(torch.float32).tiny) if tile.hidden is not None else denom)
    lse = peak.add_(denom.log_())  # log 0 = -inf: weight 0 in the merge
    out = out.view(hkv, p, tile.rows, group, d).permute(1, 2, 0, 3, 4).reshape(p * tile.rows, hkv * group, d)
    lse = lse.view(hkv, p, tile.rows, group).permute(1, 2, 0, 3).reshape(p * tile.rows, hkv * group)
    if tile.keep is not None:
        out = out.index_select(0, tile.keep)
        lse = lse.index_select(0, tile.keep)
    return out, lse


def merge_partials(out: torch.Tensor, lse: torch.Tensor, query: torch.Tensor, num_seqs: int) -> torch.Tensor:
    """Per query: sum_i exp(lse_i - m) out_i / sum_i exp(lse_i - m), m = max_i lse_i."""
    peak = torch.full((num_seqs, lse.shape[1]), float("-inf"), device=lse.device)
    peak.scatter_reduce_(0, query.unsqueeze(1).expand_as(lse), lse, "amax")
    weight = (lse - peak.index_select(0, query)).exp_()
    denom = torch.zeros_like(peak).index_add_(0, query, weight)
    total = torch.zeros((num_seqs, *out.shape[1:]), device=out.device).index_add_(
        0, query, out.mul_(weight.unsqueeze(-1)))
    return total.div_(denom.unsqueeze(-1))
