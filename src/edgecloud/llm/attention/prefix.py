"""Prefix-aware decode attention: PAT's pack–forward–merge (arXiv 2511.22333, §4).

Dense paged attention reads each sequence's whole context, so a prefix shared by ``n``
sequences is read ``n`` times. This backend reads it once per *pack*:

1. **Pack** (once per step): ``plan`` builds the batch's sharing tree from the block tables;
   the step's first layer, which knows the head geometry the cost model needs, lets PAT's
   scheduler decide which queries read which KV together, split long segments and choose tile
   shapes (``prefix_tree.py``). The tree and the join/split decisions depend only on the shared
   blocks, which rarely change from one decode step to the next, so they are cached under a key
   made of the shared part of the block tables; only the private tails (where each step appends
   its token) are re-planned every step.
2. **Forward** (once per layer, ``packed.py``): every group of equally shaped packs is one
   gather of whole KV blocks and, per KV head, two batched matrix products over all the packs'
   queries at once, GQA folded into the rows (the query heads of a KV head are extra rows of
   the same tile). Each pack returns its partial output and log-sum-exp.
3. **Merge**: each query combines its partial results with a numerically stable log-sum-exp
   merge (max-shifted weights), vectorised with index reductions.

The index tensors of a step are built once and reused by all its layers. On CUDA, when Triton
is installed (the ``gpu`` extra), the forward is a Triton kernel over the same plan
(``prefix_triton.py``); it is imported only then, so the CPU path never loads Triton.
"""

from __future__ import annotations

import functools
import importlib.util
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from edgecloud.llm.attention.backend import DecodeAttentionBackend, DecodeBatch
from edgecloud.llm.attention.packed import PackedPlan, TileGroup, make_tile_group, run_packed
from edgecloud.llm.attention.prefix_tree import (
    HeadGeometry,
    PackCostModel,
    Packs,
    SharingTree,
    block_table_array,
    build_sharing_tree,
    concat_packs,
    group_by_row_tile,
    group_tiles,
    leaf_packs,
    pack_shared_nodes,
    shared_prefix_blocks,
    split_long_packs,
)

if TYPE_CHECKING:
    from edgecloud.llm.attention.prefix_triton import TritonPackedPlan


@dataclass
class PrefixDecodePlan:
    batch: DecodeBatch
    table: np.ndarray
    context_lens: np.ndarray
    tree: SharingTree
    signature: bytes
    backend: PrefixDecodeAttention
    kernels: dict[tuple[HeadGeometry, torch.device], PackedPlan] = field(default_factory=dict)
    triton_kernels: dict[tuple[HeadGeometry, torch.device], TritonPackedPlan] = field(default_factory=dict)

    def kernel(self, geom: HeadGeometry) -> PackedPlan:
        key = (geom, self.batch.device)
        if key not in self.kernels:
            self.kernels[key] = self.backend.build_kernel_plan(self, geom)
        return self.kernels[key]

    def triton_kernel(self, geom: HeadGeometry) -> TritonPackedPlan:
        from edgecloud.llm.attention.prefix_triton import triton_plan

        key = (geom, self.batch.device)
        if key not in self.triton_kernels:
            self.triton_kernels[key] = triton_plan(self.kernel(geom), self.batch.block_size)
        return self.triton_kernels[key]


class PrefixDecodeAttention(DecodeAttentionBackend):
    """PAT for decode. ``parallelism``: independent matrix products the hardware can run at once
    (default: torch's CPU thread count, or the GPU's multiprocessor count)."""

    name = "prefix"

    def __init__(self, cost: PackCostModel | None = None, parallelism: int | None = None,
                 cache_size: int = 8) -> None:
        self.cost = cost or PackCostModel()
        # CUDA queries run the ragged Triton kernel, priced by its own model unless one is given
        self.cuda_cost = cost or PackCostModel.cuda()
        self.parallelism = parallelism
        self.cache_size = cache_size
        self._trees: OrderedDict[bytes, SharingTree] = OrderedDict()
        self._shared_packs: OrderedDict[tuple[bytes, HeadGeometry, PackCostModel], Packs] = OrderedDict()
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

    def build_kernel_plan(self, plan: PrefixDecodePlan, geom: HeadGeometry) -> PackedPlan:
        bs = plan.batch.block_size
        device = plan.batch.device
        cost = self.cuda_cost if device.type == "cuda" and triton_available() else self.cost
        key = (plan.signature, geom, cost)
        shared = self._shared_packs.get(key)
        if shared is None:
            shared = pack_shared_nodes(plan.tree, bs, geom, cost)
            _remember(self._shared_packs, key, shared, self.cache_size)
        packs = concat_packs([shared, leaf_packs(plan.tree, plan.context_lens, bs)])
        packs = split_long_packs(packs, geom, cost, self._parallelism(device), bs)
        if cost.ragged:
            groups = group_by_row_tile(packs.rows, geom)
        else:
            padded = -(-packs.tokens // bs) * bs  # tiles hold whole blocks
            groups = group_tiles(packs.rows, padded, geom, cost)
        return _packed_plan(plan, packs, groups, geom, ragged=cost.ragged)

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
        _, num_q_heads, head_dim = query.shape
        num_kv_heads = k_cache.shape[2]
        geom = HeadGeometry(num_kv_heads, num_q_heads // num_kv_heads, head_dim, k_cache.element_size())
        if query.is_cuda and triton_available():
            from edgecloud.llm.attention.prefix_triton import run_packed_triton

            return run_packed_triton(plan.triton_kernel(geom), query, k_cache, v_cache, scale)
        return run_packed(plan.kernel(geom), query, k_cache, v_cache, scale)


@functools.cache
def triton_available() -> bool:
    """Whether Triton is installed; checked without importing it."""
    return importlib.util.find_spec("triton") is not None


def _remember(cache: OrderedDict, key: object, value: object, size: int) -> None:
    cache[key] = value
    while len(cache) > size:
        cache.popitem(last=False)


def _packed_plan(plan: PrefixDecodePlan, packs: Packs, groups: list[np.ndarray], geom: HeadGeometry,
                 ragged: bool = False) -> PackedPlan:
    """Tile groups of whole blocks, vectorised over packs and blocks. ``ragged``: the kernel reads
    each pack's own length, so a group's block padding is not read (nor counted)."""
    order = plan.tree.order
    bs = plan.batch.block_size
    # Every piece starts on a block boundary (shared nodes are whole blocks, private tails start
    # where sharing ends, KV splits cut at block multiples); only a tail ends inside a block.
    piece_blocks = -(-packs.piece_len // bs)
    piece = np.repeat(np.arange(len(piece_blocks)), piece_blocks)
    piece_first = np.cumsum(piece_blocks) - piece_blocks
    within = np.arange(len(piece)) - piece_first[piece]
    pack_blocks = np.bincount(packs.piece_pack, weights=piece_blocks, minlength=packs.num_packs)
    pack_first = (np.cumsum(pack_blocks) - pack_blocks).astype(np.int64)
    block_pack = packs.piece_pack[piece]
    column = piece_first[piece] - pack_first[block_pack] + within
    position = packs.piece_t0[piece] + within * bs
    block_id = plan.table[order[packs.piece_src[piece]], position // bs]
    masked = packs.masked

    local = np.empty(packs.num_packs, dtype=np.int64)
    tiles: list[TileGroup] = []
    entry_query: list[np.ndarray] = []
    kv_tokens = 0
    for members in groups:
        p = len(members)
        rows = int(packs.rows[members].max())
        nblk = int(pack_blocks[members].max())
        local[members] = np.arange(p)
        r = np.arange(rows)
        pos = packs.qlo[members][:, None] + np.minimum(r[None, :], packs.rows[members][:, None] - 1)
        real = r[None, :] < packs.rows[members][:, None]
        entry_query.append(order[pos][real])

        in_group = np.isin(block_pack, members)
        bp, bc = local[block_pack[in_group]], column[in_group]
        blocks = np.zeros((p, nblk), dtype=np.int64)
        blocks[bp, bc] = block_id[in_group]
        kv_tokens += int(pack_blocks[members].sum()) * bs if ragged else p * nblk * bs

        hidden = None
        if masked[members].any():
            vis_lo = np.zeros((p, nblk), dtype=np.int64)
            vis_hi = np.zeros((p, nblk), dtype=np.int64)
            vis_lo[bp, bc] = packs.piece_vis_lo[piece[in_group]]
            vis_hi[bp, bc] = packs.piece_vis_hi[piece[in_group]]
            vis_lo, vis_hi = np.repeat(vis_lo, bs, axis=1), np.repeat(vis_hi, bs, axis=1)
            hidden = ~((pos[:, :, None] >= vis_lo[:, None, :]) & (pos[:, :, None] < vis_hi[:, None, :]))
        if (packs.tokens[members] < nblk * bs).any():
            padding = np.arange(nblk * bs)[None, None, :] >= packs.tokens[members][:, None, None]
            hidden = padding if hidden is None else hidden | padding
        tiles.append(make_tile_group(order[pos], real, blocks, hidden, geom.num_kv_heads,
                                     plan.batch.device, packs.tokens[members] if ragged else None))
    queries = np.concatenate(entry_query) if entry_query else np.zeros(0, dtype=np.int64)
    single = len(queries) == len(order) and len(np.unique(queries)) == len(order)
    return PackedPlan(
        groups=tiles,
        entry_query=torch.from_numpy(queries).to(plan.batch.device),
        single_entry=single,
        num_packs=packs.num_packs,
        kv_tokens_read=kv_tokens,
    )
