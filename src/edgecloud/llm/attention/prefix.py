"""Prefix-aware decode attention: PAT's pack–forward–merge (arXiv 2511.22333, §4).

Dense paged attention reads each sequence's whole context, so a prefix shared by ``n``
sequences is read ``n`` times. This backend reads it once per *pack*:

1. **Pack** (once per step, in ``plan``): build the batch's sharing tree from the block tables
   and let PAT's scheduler decide which queries read which KV together, split long segments and
   choose tile shapes (``prefix_tree.py``). The tree and the join/split decisions depend only on
   the shared blocks, which rarely change from one decode step to the next, so they are cached
   under a key made of the shared part of the block tables; only the private tails (where each
   step appends its token) are re-planned every step.
2. **Forward** (once per layer): every group of equally shaped packs is one gather of its KV rows
   and two batched matrix products over all the pack's queries at once, GQA folded into the
   rows (the ``group`` query heads of a KV head are extra rows of the same tile). Each pack
   returns its partial output and log-sum-exp.
3. **Merge**: each query combines its partial results with a numerically stable log-sum-exp
   merge (max-shifted weights), vectorised with index reductions.

All index tensors are computed in ``plan``/on the first layer and reused by the other layers.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch

from edgecloud.llm.attention.backend import DecodeAttentionBackend, DecodeBatch
from edgecloud.llm.attention.prefix_tree import (
    HeadGeometry,
    PackCostModel,
    Packs,
    SharingTree,
    block_table_array,
    build_sharing_tree,
    concat_packs,
    group_tiles,
    leaf_packs,
    pack_shared_nodes,
    shared_prefix_blocks,
    split_long_packs,
)


@dataclass
class TileGroup:
    """Packs of one padded shape, run as one batched product: ``num_packs`` × ``num_kv_heads``
    matrices of ``rows × group`` query rows against ``tokens`` KV rows."""

    num_packs: int
    rows: int
    tokens: int
    q_index: torch.Tensor  # [P * Hkv * rows] rows of query.view(B * Hkv, group * D)
    kv_index: torch.Tensor  # [P * Hkv * tokens] rows of cache.view(-1, D)
    hidden: torch.Tensor | None  # [P, 1, rows, 1, tokens] True where a score is masked off
    keep: torch.Tensor | None  # [entries] indices into P * rows of real (not padding) rows


@dataclass
class PrefixKernelPlan:
    """Everything ``forward`` needs for one head geometry."""

    groups: list[TileGroup]
    entry_query: torch.Tensor  # [entries] batch index of each partial result, groups in order
    single_entry: bool  # every query has exactly one partial: the merge is a permutation
    num_packs: int
    kv_tokens_read: int  # padding included


@dataclass
class PrefixDecodePlan:
    batch: DecodeBatch
    table: np.ndarray
    context_lens: np.ndarray
    tree: SharingTree
    signature: bytes
    backend: PrefixDecodeAttention
    kernels: dict[tuple[HeadGeometry, torch.device], PrefixKernelPlan] = field(default_factory=dict)

    def kernel(self, geom: HeadGeometry) -> PrefixKernelPlan:
        key = (geom, self.batch.device)
        if key not in self.kernels:
            self.kernels[key] = self.backend.build_kernel_plan(self, geom)
        return self.kernels[key]


class PrefixDecodeAttention(DecodeAttentionBackend):
    """PAT for decode. ``parallelism``: independent matrix products the hardware can run at once
    (default: torch's CPU thread count, or the GPU's multiprocessor count)."""

    name = "prefix"

    def __init__(self, cost: PackCostModel | None = None, parallelism: int | None = None,
                 cache_size: int = 8) -> None:
        self.cost = cost or PackCostModel()
        self.parallelism = parallelism
        self.cache_size = cache_size
        self._trees: OrderedDict[bytes, SharingTree] = OrderedDict()
        self._shared_packs: OrderedDict[tuple[bytes, HeadGeometry], Packs] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0

    def plan(self, batch: DecodeBatch) -> PrefixDecodePlan:
        context_lens = np.asarray(batch.context_lens, dtype=np.int64)
        if batch.num_seqs and context_lens.min() < 1:
            raise ValueError(f"context_lens must be >= 1, got {int(context_lens.min())}")
        table = block_table_array(batch.block_tables, context_lens, batch.block_size)
        shared = shared_prefix_blocks(table, context_lens, batch.block_size)
        depth = int(shared.max(initial=0))
        trunc = np.where(np.arange(depth)[None, :] < shared[:, None], table[:, :depth], -1)
        signature = np.asarray(trunc.shape, dtype=np.int64).tobytes() + trunc.tobytes()
        tree = self._trees.get(signature)
        if tree is None:
            self.cache_misses += 1
            tree = build_sharing_tree(table, shared)
            _remember(self._trees, signature, tree, self.cache_size)
        else:
            self.cache_hits += 1
            self._trees.move_to_end(signature)
        return PrefixDecodePlan(batch=batch, table=table, context_lens=context_lens, tree=tree,
                                signature=signature, backend=self)

    def build_kernel_plan(self, plan: PrefixDecodePlan, geom: HeadGeometry) -> PrefixKernelPlan:
        bs = plan.batch.block_size
        key = (plan.signature, geom)
        shared = self._shared_packs.get(key)
        if shared is None:
            shared = pack_shared_nodes(plan.tree, bs, geom, self.cost)
            _remember(self._shared_packs, key, shared, self.cache_size)
        packs = concat_packs([shared, leaf_packs(plan.tree, plan.context_lens, bs)])
        packs = split_long_packs(packs, geom, self.cost, self._parallelism(plan.batch.device), bs)
        return _kernel_plan(plan, packs, group_tiles(packs.rows, packs.tokens, geom, self.cost), geom)

    def _parallelism(self, device: torch.device) -> int:
        if self.parallelism is not None:
            return self.parallelism
        if device.type == "cuda":
            return torch.cuda.get_device_properties(device).multi_processor_count
        return torch.get_num_threads()

    def forward(
        self,
        plan: PrefixDecodePlan,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        num_seqs, num_q_heads, head_dim = query.shape
        num_kv_heads = k_cache.shape[2]
        group = num_q_heads // num_kv_heads
        geom = HeadGeometry(num_kv_heads, group, head_dim, k_cache.element_size())
        if num_seqs == 0:
            return query.new_empty(query.shape)
        kernel = plan.kernel(geom)
        q_rows = query.reshape(num_seqs * num_kv_heads, group * head_dim)
        k_rows = k_cache.view(-1, head_dim)
        v_rows = v_cache.view(-1, head_dim)
        outs: list[torch.Tensor] = []
        lses: list[torch.Tensor] = []
        for tile in kernel.groups:
            out, lse = _tile_attention(tile, q_rows, k_rows, v_rows, scale, geom)
            outs.append(out)
            lses.append(lse)
        out = outs[0] if len(outs) == 1 else torch.cat(outs)
        if kernel.single_entry:
            merged = torch.empty_like(out)
            merged[kernel.entry_query] = out
            return merged.to(query.dtype)
        lse = lses[0] if len(lses) == 1 else torch.cat(lses)
        return _merge(out, lse, kernel.entry_query, num_seqs).to(query.dtype)


def _remember(cache: OrderedDict, key: object, value: object, size: int) -> None:
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)


def _tile_attention(tile: TileGroup, q_rows: torch.Tensor, k_rows: torch.Tensor, v_rows: torch.Tensor,
                    scale: float, geom: HeadGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial attention of every pack in the group: (output [entries, Hq, D], lse [entries, Hq])."""
    p, hkv, g, d = tile.num_packs, geom.num_kv_heads, geom.group, geom.head_dim
    q = q_rows.index_select(0, tile.q_index).view(p * hkv, tile.rows * g, d)
    keys = k_rows.index_select(0, tile.kv_index).view(p * hkv, tile.tokens, d)
    scores = torch.bmm(q, keys.transpose(1, 2)).float().mul_(scale)
    if tile.hidden is not None:
        scores.view(p, hkv, tile.rows, g, tile.tokens).masked_fill_(tile.hidden, float("-inf"))
    peak = scores.amax(dim=-1, keepdim=True)
    if tile.hidden is not None:
        # a row that sees nothing in this pack (a joined node's tokens are hidden from it)
        peak.masked_fill_(peak == float("-inf"), 0.0)
    probs = scores.sub_(peak).exp_()
    denom = probs.sum(dim=-1, keepdim=True)
    values = v_rows.index_select(0, tile.kv_index).view(p * hkv, tile.tokens, d)
    out = torch.bmm(probs.to(values.dtype), values).float()
    out.div_(denom.clamp_min(torch.finfo(torch.float32).tiny) if tile.hidden is not None else denom)
    lse = peak.add_(denom.log_()).view(p, hkv, tile.rows, g)  # log 0 = -inf: weight 0 in the merge
    out = out.view(p, hkv, tile.rows, g, d).permute(0, 2, 1, 3, 4).reshape(p * tile.rows, hkv * g, d)
    lse = lse.permute(0, 2, 1, 3).reshape(p * tile.rows, hkv * g)
    if tile.keep is not None:
        out = out.index_select(0, tile.keep)
        lse = lse.index_select(0, tile.keep)
    return out, lse


def _merge(out: torch.Tensor, lse: torch.Tensor, query: torch.Tensor, num_seqs: int) -> torch.Tensor:
    """Combine partial results per query: sum_i exp(lse_i - m) * out_i / sum_i exp(lse_i - m)."""
    num_heads = lse.shape[1]
    peak = torch.full((num_seqs, num_heads), float("-inf"), device=lse.device)
    peak.scatter_reduce_(0, query.unsqueeze(1).expand_as(lse), lse, "amax")
    weight = (lse - peak.index_select(0, query)).exp_()
    denom = torch.zeros_like(peak).index_add_(0, query, weight)
    total = torch.zeros((num_seqs, *out.shape[1:]), device=out.device).index_add_(
        0, query, out.mul_(weight.unsqueeze(-1)))
    return total.div_(denom.unsqueeze(-1))


def _kernel_plan(plan: PrefixDecodePlan, packs: Packs, groups: list[np.ndarray], geom: HeadGeometry
                 ) -> PrefixKernelPlan:
    """Index tensors of every tile group (all vectorised over packs and tokens)."""
    device = plan.batch.device
    order = plan.tree.order
    bs = plan.batch.block_size
    hkv = geom.num_kv_heads
    heads = np.arange(hkv, dtype=np.int64)

    # every KV token of every pack: its column in the pack, its cache slot, who may see it
    piece = np.repeat(np.arange(len(packs.piece_len)), packs.piece_len)
    piece_start = np.cumsum(packs.piece_len) - packs.piece_len
    pack_start = np.cumsum(packs.tokens) - packs.tokens
    within = np.arange(len(piece)) - piece_start[piece]
    column = piece_start[piece] - pack_start[packs.piece_pack[piece]] + within
    position = packs.piece_t0[piece] + within
    src = order[packs.piece_src[piece]]
    slot = plan.table[src, position // bs] * bs + position % bs
    token_pack = packs.piece_pack[piece]
    masked = packs.masked

    local = np.empty(packs.num_packs, dtype=np.int64)
    tiles: list[TileGroup] = []
    entry_query: list[np.ndarray] = []
    kv_tokens = 0
    for members in groups:
        p = len(members)
        rows = int(packs.rows[members].max())
        tokens = int(packs.tokens[members].max())
        local[members] = np.arange(p)
        r = np.arange(rows)
        pos = packs.qlo[members][:, None] + np.minimum(r[None, :], packs.rows[members][:, None] - 1)
        q_index = (order[pos][:, None, :] * hkv + heads[None, :, None]).reshape(-1)
        real = r[None, :] < packs.rows[members][:, None]
        keep = None if real.all() else np.flatnonzero(real.reshape(-1))
        entry_query.append(order[pos][real])

        in_group = np.isin(token_pack, members)
        tp, tc = local[token_pack[in_group]], column[in_group]
        slots = np.zeros((p, tokens), dtype=np.int64)
        slots[tp, tc] = slot[in_group]
        kv_index = (slots[:, None, :] * hkv + heads[None, :, None]).reshape(-1)
        kv_tokens += p * tokens

        hidden = None
        if masked[members].any():
            vis_lo = np.zeros((p, tokens), dtype=np.int64)
            vis_hi = np.zeros((p, tokens), dtype=np.int64)
            vis_lo[tp, tc] = packs.piece_vis_lo[piece[in_group]]
            vis_hi[tp, tc] = packs.piece_vis_hi[piece[in_group]]
            seen = (pos[:, :, None] >= vis_lo[:, None, :]) & (pos[:, :, None] < vis_hi[:, None, :])
            hidden = ~seen[:, None, :, None, :]
        elif (packs.tokens[members] < tokens).any():
            padding = np.arange(tokens)[None, :] >= packs.tokens[members][:, None]
            hidden = padding[:, None, None, None, :]

        tiles.append(TileGroup(
            num_packs=p, rows=rows, tokens=tokens,
            q_index=torch.from_numpy(q_index).to(device),
            kv_index=torch.from_numpy(kv_index).to(device),
            hidden=None if hidden is None else torch.from_numpy(np.ascontiguousarray(hidden)).to(device),
            keep=None if keep is None else torch.from_numpy(keep).to(device),
        ))
    queries = np.concatenate(entry_query) if entry_query else np.zeros(0, dtype=np.int64)
    single = len(queries) == len(order) and len(np.unique(queries)) == len(order)
    return PrefixKernelPlan(
        groups=tiles,
        entry_query=torch.from_numpy(queries).to(device),
        single_entry=single,
        num_packs=packs.num_packs,
        kv_tokens_read=kv_tokens,
    )
