"""The sharing tree of a decode batch and PAT's pack scheduler (arXiv 2511.22333, §4.1–4.2).

This module is pure numpy and knows nothing about tensors on a device: it turns one decode
step's block tables into *work items* ("packs": a contiguous range of queries and the KV tokens
they read together) and groups packs of similar shape into *tiles* that the backend
(``prefix.py``) runs as one batched matrix product each.

Tree. Prefix caching makes sequences that share a prefix share its physical blocks, so the
sharing tree is the trie of the block tables at block granularity. Only full blocks used by at
least two sequences can be shared; each sequence's private tail (its unshared full blocks and
its partly filled last block) is a leaf. The trie is built from the lexicographically sorted
truncated tables and the longest common prefix of neighbours (a stack walk, one Python
iteration per sequence), so every node's queries are a contiguous range of the sorted order.

Packing (PAT's pack scheduler). Every shared node either gets its own pack (its queries read its
KV once, at the cost of one more partial result per query to merge and a tile with fewer rows)
or joins its parent's pack (read in the same tile as the parent's, with the parent's queries
masked off it: wasted multiply-adds, but a fuller tile and no extra merge). The cost model below
prices both and picks the cheaper. Long segments are split along KV when the batch alone does
not give the hardware enough independent work, or when a tile's score matrix would be too big.
Packs are then grouped into tiles of one shape (rows × tokens) when the padding costs less than
running another batched product.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class HeadGeometry:
    """What the cost model needs to know about one layer's attention."""

    num_kv_heads: int
    group: int  # query heads per KV head (GQA ratio); folded into the rows of a tile
    head_dim: int
    elem_bytes: int

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_kv_heads * self.head_dim * self.elem_bytes


@dataclass(frozen=True)
class PackCostModel:
    """A roofline-style price of one tile, in seconds. Defaults describe a small CPU.

    ``saturating_rows``: rows (queries × GQA ratio) a tile needs before its matrix product runs
    at full speed; a tile with fewer rows is "under-used" and its multiply-adds cost more each.
    """

    bandwidth: float = 10e9
    flops: float = 50e9
    saturating_rows: int = 16
    group_overhead_s: float = 80e-6
    pack_overhead_s: float = 2e-6
    min_split_tokens: int = 256
    max_scores_bytes: int = 64 << 20
    max_gather_bytes: int = 512 << 20
    work_per_thread: int = 2
    # The kernel walks each pack's own KV length (Triton on CUDA): token padding costs nothing, so
    # packs are grouped by row tile only, and since it runs one program per (pack, KV head, row
    # tile), long packs are split so programs get comparable lengths, not just enough of them.
    ragged: bool = False

    @classmethod
    def cuda(cls) -> PackCostModel:
        """A Hopper-class GPU running ``prefix_triton``: a few TB/s, hundreds of TFLOP/s on tensor
        cores, microseconds per launch; no gathered copy or score matrix is materialised."""
        return cls(bandwidth=3e12, flops=300e12, saturating_rows=16, group_overhead_s=10e-6,
                   pack_overhead_s=0.2e-6, min_split_tokens=256, max_scores_bytes=1 << 40,
                   max_gather_bytes=1 << 40, work_per_thread=4, ragged=True)

    def kv_time(self, tokens: float, geom: HeadGeometry) -> float:
        return tokens * geom.kv_bytes_per_token / self.bandwidth

    def compute_time(self, rows: float, tokens: float, geom: HeadGeometry) -> float:
        rows = max(rows, 1.0)
        efficiency = min(1.0, rows / self.saturating_rows)
        return 4.0 * rows * tokens * geom.head_dim * geom.num_kv_heads / (self.flops * efficiency)

    def merge_time(self, queries: float, geom: HeadGeometry) -> float:
        # one partial output and its log-sum-exp written, then read and rescaled by the merge
        q_heads = geom.num_kv_heads * geom.group
        return 3.0 * queries * q_heads * (geom.head_dim + 1) * 4 / self.bandwidth

    def tile_time(self, rows: float, tokens: float, geom: HeadGeometry) -> float:
        return self.kv_time(tokens, geom) + self.compute_time(rows * geom.group, tokens, geom)


@dataclass
class SharingTree:
    """The shared part of a batch's prefix tree, in the sorted order of its sequences.

    ``order[p]`` is the batch index of the sequence at sorted position ``p``. Node ``j`` covers
    block columns ``[start[j], end[j])`` of the block table of sequence ``order[qlo[j]]`` and is
    shared by the sequences at sorted positions ``[qlo[j], qhi[j])``; ``parent[j]`` is -1 at the
    top. Nodes are listed parents first. ``shared_blocks[i]`` is how many leading full blocks of
    batch sequence ``i`` lie in shared nodes; the rest of its context is its private leaf.
    """

    order: np.ndarray
    shared_blocks: np.ndarray
    start: np.ndarray
    end: np.ndarray
    qlo: np.ndarray
    qhi: np.ndarray
    parent: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.start)


def block_table_array(block_tables: Sequence[Sequence[int]], context_lens: np.ndarray, block_size: int
                      ) -> np.ndarray:
    """``[num_seqs, max_blocks]`` int64 of the blocks each sequence uses, padded with -1."""
    used = -(-context_lens // block_size)
    width = int(used.max(initial=0))
    table = np.full((len(block_tables), width), -1, dtype=np.int64)
    for row, blocks in enumerate(block_tables):
        n = int(used[row])
        if len(blocks) < n:
            raise ValueError(
                f"block_tables[{row}] has {len(blocks)} blocks but context_lens[{row}]="
                f"{int(context_lens[row])} needs {n} at block_size={block_size}"
            )
        table[row, :n] = blocks[:n]
    return table


def shared_prefix_blocks(table: np.ndarray, context_lens: np.ndarray, block_size: int) -> np.ndarray:
    """Per sequence, the number of leading full blocks that some other sequence also uses in full."""
    num_seqs, width = table.shape
    if width == 0:
        return np.zeros(num_seqs, dtype=np.int64)
    full = np.arange(width)[None, :] < (context_lens // block_size)[:, None]
    counts = np.bincount(table[full], minlength=int(table.max(initial=0)) + 1)
    shared = full & (counts[np.maximum(table, 0)] >= 2)
    return np.where(shared.all(axis=1), width, np.argmin(shared, axis=1)).astype(np.int64)


def build_sharing_tree(table: np.ndarray, shared_blocks: np.ndarray) -> SharingTree:
    """The compressed trie of the rows of ``table`` truncated to ``shared_blocks`` columns."""
    num_seqs = table.shape[0]
    depth = int(shared_blocks.max(initial=0))
    trunc = np.where(np.arange(depth)[None, :] < shared_blocks[:, None], table[:, :depth], -1)
    # lexsort's last key is the primary one; -1 padding sorts a prefix before its extensions,
    # which gives a pre-order walk of the trie
    order = np.lexsort(trunc.T[::-1]) if depth else np.arange(num_seqs)
    rows = trunc[order]
    lens = shared_blocks[order]
    lcp = np.zeros(num_seqs, dtype=np.int64)
    if num_seqs > 1 and depth:
        differs = rows[1:] != rows[:-1]
        first_diff = np.where(differs.any(axis=1), np.argmax(differs, axis=1), depth)
        lcp[1:] = np.minimum(first_diff, np.minimum(lens[1:], lens[:-1]))

    start: list[int] = []
    end: list[int] = []
    qlo: list[int] = []
    qhi: list[int] = []
    parent: list[int] = []

    def new_node(s: int, e: int, lo: int, par: int) -> int:
        start.append(s)
        end.append(e)
        qlo.append(lo)
        qhi.append(-1)
        parent.append(par)
        return len(start) - 1

    stack: list[int] = []  # open nodes along the current path, deepest last

    def top_end() -> int:
        return end[stack[-1]] if stack else 0

    for pos in range(num_seqs):
        common = int(lcp[pos])
        popped = -1
        while stack and end[stack[-1]] > common:
            popped = stack.pop()
            qhi[popped] = pos
        if popped >= 0 and top_end() < common:
            # the previous path and this one part inside the node just closed: split it
            mid = new_node(top_end(), common, qlo[popped], stack[-1] if stack else -1)
            start[popped] = common
            parent[popped] = mid
            stack.append(mid)
        own = int(lens[pos])
        if own > common:
            stack.append(new_node(common, own, pos, stack[-1] if stack else -1))
    for node in stack:
        qhi[node] = num_seqs

    # a split node is created after its child; renumber so that parents come first
    pre = np.lexsort((np.asarray(start, dtype=np.int64), np.asarray(qlo, dtype=np.int64)))
    rank = np.empty(len(pre), dtype=np.int64)
    rank[pre] = np.arange(len(pre))
    par = np.asarray(parent, dtype=np.int64)[pre]
    par = np.where(par >= 0, rank[np.maximum(par, 0)], -1)
    return SharingTree(
        order=order.astype(np.int64),
        shared_blocks=shared_blocks,
        start=np.asarray(start, dtype=np.int64)[pre],
        end=np.asarray(end, dtype=np.int64)[pre],
        qlo=np.asarray(qlo, dtype=np.int64)[pre],
        qhi=np.asarray(qhi, dtype=np.int64)[pre],
        parent=par,
    )


@dataclass
class Packs:
    """Work items as flat arrays: pack ``k`` serves sorted positions ``[qlo[k], qlo[k] + rows[k])``
    and reads ``tokens[k]`` KV tokens, made of the pieces ``piece_pack == k`` in order.

    A piece is a run of token positions ``[t0, t0 + length)`` of the sequence at sorted position
    ``src`` (whose block table holds them), visible to sorted positions ``[vis_lo, vis_hi)``.
    """

    qlo: np.ndarray
    rows: np.ndarray
    tokens: np.ndarray
    piece_pack: np.ndarray
    piece_src: np.ndarray
    piece_t0: np.ndarray
    piece_len: np.ndarray
    piece_vis_lo: np.ndarray
    piece_vis_hi: np.ndarray

    @property
    def num_packs(self) -> int:
        return len(self.qlo)

    @property
    def masked(self) -> np.ndarray:
        """Per pack: does some piece hide itself from some of the pack's rows (a joined node)?"""
        partial = (self.piece_vis_lo > self.qlo[self.piece_pack]) | (
            self.piece_vis_hi < (self.qlo + self.rows)[self.piece_pack]
        )
        out = np.zeros(self.num_packs, dtype=bool)
        out[self.piece_pack[partial]] = True
        return out


def concat_packs(parts: Sequence[Packs]) -> Packs:
    offsets = np.cumsum([0] + [p.num_packs for p in parts[:-1]])
    return Packs(
        qlo=np.concatenate([p.qlo for p in parts]),
        rows=np.concatenate([p.rows for p in parts]),
        tokens=np.concatenate([p.tokens for p in parts]),
        piece_pack=np.concatenate([p.piece_pack + off for p, off in zip(parts, offsets, strict=True)]),
        piece_src=np.concatenate([p.piece_src for p in parts]),
        piece_t0=np.concatenate([p.piece_t0 for p in parts]),
        piece_len=np.concatenate([p.piece_len for p in parts]),
        piece_vis_lo=np.concatenate([p.piece_vis_lo for p in parts]),
        piece_vis_hi=np.concatenate([p.piece_vis_hi for p in parts]),
    )


def pack_shared_nodes(tree: SharingTree, block_size: int, geom: HeadGeometry, cost: PackCostModel
                      ) -> Packs:
    """PAT's join-or-split decision for every shared node, parents first."""
    n = tree.num_nodes
    pack_of = np.empty(n, dtype=np.int64)
    head: list[int] = []  # the node that opened each pack; the pack serves its queries
    for node in range(n):
        par = int(tree.parent[node])
        tokens = int(tree.end[node] - tree.start[node]) * block_size
        own_rows = int(tree.qhi[node] - tree.qlo[node])
        if par >= 0:
            host = head[pack_of[par]]
            host_rows = int(tree.qhi[host] - tree.qlo[host])
            split = (cost.compute_time(own_rows * geom.group, tokens, geom)
                     + cost.merge_time(own_rows, geom) + cost.pack_overhead_s)
            join = cost.compute_time(host_rows * geom.group, tokens, geom)
            if join < split:
                pack_of[node] = pack_of[par]
                continue
        pack_of[node] = len(head)
        head.append(node)
    heads = np.asarray(head, dtype=np.int64)
    # pieces: one per node, grouped by pack (stable so a pack's pieces keep tree order)
    by_pack = np.argsort(pack_of, kind="stable")
    lens = (tree.end - tree.start)[by_pack] * block_size
    return Packs(
        qlo=tree.qlo[heads],
        rows=(tree.qhi - tree.qlo)[heads],
        tokens=np.bincount(pack_of, weights=(tree.end - tree.start) * block_size,
                           minlength=len(heads)).astype(np.int64),
        piece_pack=pack_of[by_pack],
        piece_src=tree.qlo[by_pack],
        piece_t0=tree.start[by_pack] * block_size,
        piece_len=lens,
        piece_vis_lo=tree.qlo[by_pack],
        piece_vis_hi=tree.qhi[by_pack],
    )


def leaf_packs(tree: SharingTree, context_lens: np.ndarray, block_size: int) -> Packs:
    """One pack per sequence over its private tail (never shared, so one query each)."""
    ctx = context_lens[tree.order]
    t0 = tree.shared_blocks[tree.order] * block_size
    # a sequence whose whole context is shared (it ends on a block boundary inside another
    # sequence's prefix) has no private tail
    pos = np.flatnonzero(ctx > t0)
    count = len(pos)
    local = np.arange(count, dtype=np.int64)
    return Packs(
        qlo=pos, rows=np.ones(count, dtype=np.int64), tokens=ctx[pos] - t0[pos],
        piece_pack=local, piece_src=pos, piece_t0=t0[pos], piece_len=ctx[pos] - t0[pos],
        piece_vis_lo=pos, piece_vis_hi=pos + 1,
    )


def split_long_packs(packs: Packs, geom: HeadGeometry, cost: PackCostModel, parallelism: int,
                     block_size: int) -> Packs:
    """KV splitting: cut long packs into chunks when the batch is too small to keep
    ``parallelism`` workers busy, or when a tile's scores would exceed ``max_scores_bytes``."""
    work = packs.num_packs * geom.num_kv_heads
    want = cost.work_per_thread * parallelism
    if cost.ragged:
        # a fair share of all KV tokens per program; a pack longer than that is cut to it
        fair = max(cost.min_split_tokens, -(-int(packs.tokens.sum()) * geom.num_kv_heads // want))
        for_parallelism = -(-packs.tokens // fair)
    else:
        for_parallelism = math.ceil(want / work) if 0 < work < want else 1
    score_bytes_per_token = packs.rows * geom.group * geom.num_kv_heads * 4
    by_memory = -(-packs.tokens * score_bytes_per_token // cost.max_scores_bytes)
    by_length = np.maximum(packs.tokens // cost.min_split_tokens, 1)
    chunks = np.maximum(np.minimum(for_parallelism, by_length), by_memory)
    if (chunks <= 1).all():
        return packs
    # chunk length in whole blocks so that chunks of equal packs have equal shapes
    chunk_len = -(-packs.tokens // chunks)
    chunk_len = -(-chunk_len // block_size) * block_size
    chunks = -(-packs.tokens // chunk_len)

    # Cut every piece at its pack's chunk boundaries: piece covers pack offsets [a, b)
    piece_start = np.cumsum(packs.piece_len) - packs.piece_len
    pack_first_piece = np.searchsorted(packs.piece_pack, np.arange(packs.num_packs))
    a = piece_start - piece_start[pack_first_piece][packs.piece_pack]
    b = a + packs.piece_len
    cl = chunk_len[packs.piece_pack]
    first_chunk = a // cl
    n_cuts = (b - 1) // cl - first_chunk + 1
    rep = np.repeat(np.arange(len(a)), n_cuts)
    k = np.arange(len(rep)) - np.repeat(np.cumsum(n_cuts) - n_cuts, n_cuts)
    chunk = first_chunk[rep] + k
    lo = np.maximum(a[rep], chunk * cl[rep])
    hi = np.minimum(b[rep], (chunk + 1) * cl[rep])
    pack_base = np.cumsum(chunks) - chunks
    new_pack = pack_base[packs.piece_pack[rep]] + chunk
    old_pack = np.repeat(np.arange(packs.num_packs), chunks)
    return Packs(
        qlo=packs.qlo[old_pack],
        rows=packs.rows[old_pack],
        tokens=np.bincount(new_pack, weights=hi - lo, minlength=len(old_pack)).astype(np.int64),
        piece_pack=new_pack,
        piece_src=packs.piece_src[rep],
        piece_t0=packs.piece_t0[rep] + (lo - a[rep]),
        piece_len=hi - lo,
        piece_vis_lo=packs.piece_vis_lo[rep],
        piece_vis_hi=packs.piece_vis_hi[rep],
    )


def group_tiles(rows: np.ndarray, tokens: np.ndarray, geom: HeadGeometry, cost: PackCostModel
                ) -> list[np.ndarray]:
    """Tile shape choice: partition packs into groups run as one batched product each, padded
    to the group's largest rows and tokens, joining a group only when the padding costs less
    than another group's fixed overhead (and its gathered KV stays under ``max_gather_bytes``)."""
    order = np.lexsort((-tokens, -rows))
    groups: list[list[int]] = []
    tile_rows = tile_tokens = 0
    for k in order.tolist():
        r, t = int(rows[k]), int(tokens[k])
        if groups:
            count = len(groups[-1])
            new_r, new_t = max(tile_rows, r), max(tile_tokens, t)
            padded = (count + 1) * cost.tile_time(new_r, new_t, geom) - count * cost.tile_time(
                tile_rows, tile_tokens, geom)
            fits = (count + 1) * new_t * geom.kv_bytes_per_token <= cost.max_gather_bytes
            if fits and padded - cost.tile_time(r, t, geom) < cost.group_overhead_s:
                groups[-1].append(k)
                tile_rows, tile_tokens = new_r, new_t
                continue
        groups.append([k])
        tile_rows, tile_tokens = r, t
    return [np.asarray(g, dtype=np.int64) for g in groups]


MAX_TILE_ROWS = 64  # the most query rows one program of the ragged (Triton) kernel holds


def group_by_row_tile(rows: np.ndarray, geom: HeadGeometry, max_tile_rows: int = MAX_TILE_ROWS
                      ) -> list[np.ndarray]:
    """Tile shape choice for a ragged kernel: the tile's row count is the power of two (16 to
    ``max_tile_rows``) that holds a pack's query rows × GQA ratio, and a pack needing more takes
    several row tiles. Packs with the same row tile and count run in one launch, whatever their
    KV lengths, so row padding stays under one tile and no program walks an empty row tile."""
    need = np.maximum(rows * geom.group, 1)
    tile = np.minimum(max_tile_rows, np.maximum(16, 1 << np.ceil(np.log2(need)).astype(np.int64)))
    key = tile * (1 << 32) + -(-need // tile)
    return [np.flatnonzero(key == k) for k in np.unique(key)]
