"""Two-level cascade decode attention, and dense decode attention: the baselines PAT is compared
with (FlashInfer's cascade attention, RelayAttention; one query per sequence).

The prefix common to *every* sequence of the batch is attended once, by all queries together
(one matrix product per KV head); each sequence's remaining context is attended densely, one
query per sequence; the two partial results are merged with their log-sum-exps. It removes the
redundant reads of a single system prompt but not of deeper sharing (a template shared by only
some of the sequences is still read once per sequence), which is what PAT adds.

Not an engine backend: the attention benchmark uses it as a baseline. It runs on the same
packed kernels as the prefix backend (``packed.py``), so the comparison measures what is read
and how it is scheduled, not two kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from edgecloud.llm.attention.backend import DecodeAttentionBackend, DecodeBatch
from edgecloud.llm.attention.packed import PackedPlan, TileGroup, make_tile_group, run_packed
from edgecloud.llm.attention.prefix_tree import block_table_array


class CascadeDecodeAttention(DecodeAttentionBackend):
    """``max_gather_tokens`` bounds the suffix tokens gathered at once (memory), by sequence.

    With ``share_prefix=False`` nothing is shared and this is dense paged attention (one query
    per sequence over its whole context) on the same primitives: the fair dense baseline.
    """

    name = "cascade"

    def __init__(self, share_prefix: bool = True, max_gather_tokens: int = 1 << 15) -> None:
        self.share_prefix = share_prefix
        self.max_gather_tokens = max_gather_tokens

    def plan(self, batch: DecodeBatch) -> CascadeDecodePlan:
        return CascadeDecodePlan(batch, self)

    def forward(self, plan: CascadeDecodePlan, query: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, scale: float) -> torch.Tensor:
        return run_packed(plan.kernel(k_cache.shape[2]), query, k_cache, v_cache, scale)

    def build(self, batch: DecodeBatch, num_kv_heads: int) -> PackedPlan:
        bs = batch.block_size
        ctx = np.asarray(batch.context_lens, dtype=np.int64)
        table = block_table_array(batch.block_tables, ctx, bs)
        common = 0
        if self.share_prefix and batch.num_seqs > 1:
            full = int((ctx // bs).min())
            same = (table[:, :full] == table[:1, :full]).all(axis=0)
            common = int(np.argmin(same)) if not same.all() else full
            # every sequence keeps at least one token of its own for the dense part
            common = min(common, int(ctx.min() - 1) // bs)
        groups: list[TileGroup] = []
        entries: list[np.ndarray] = []
        seqs = np.arange(batch.num_seqs)
        if common:
            groups.append(make_tile_group(seqs[None, :], np.ones((1, batch.num_seqs), dtype=bool),
                                          table[:1, :common], None, num_kv_heads, batch.device))
            entries.append(seqs)
        suffix_blocks = -(-(ctx - common * bs) // bs)
        start = 0
        while start < batch.num_seqs:
            stop = start + 1
            while stop < batch.num_seqs and \
                    (stop + 1 - start) * suffix_blocks[start:stop + 1].max() * bs <= self.max_gather_tokens:
                stop += 1
            nblk = int(suffix_blocks[start:stop].max())
            cols = common + np.arange(nblk)[None, :]
            inside = cols < (-(-ctx[start:stop] // bs))[:, None]
            blocks = np.where(inside, table[seqs[start:stop, None], np.minimum(cols, table.shape[1] - 1)], 0)
            hidden = (common * bs + np.arange(nblk * bs))[None, None, :] >= ctx[start:stop, None, None]
            groups.append(make_tile_group(seqs[start:stop, None], np.ones((stop - start, 1), dtype=bool),
                                          blocks, hidden if hidden.any() else None, num_kv_heads,
                                          batch.device))
            entries.append(seqs[start:stop])
            start = stop
        queries = np.concatenate(entries) if entries else np.zeros(0, dtype=np.int64)
        return PackedPlan(
            groups=groups,
            entry_query=torch.from_numpy(queries).to(batch.device),
            single_entry=not common,
            num_packs=sum(g.num_packs for g in groups),
            kv_tokens_read=sum(g.num_packs * g.blocks * bs for g in groups),
        )


@dataclass
class CascadeDecodePlan:
    batch: DecodeBatch
    backend: CascadeDecodeAttention
    kernels: dict[int, PackedPlan] = field(default_factory=dict)

    def kernel(self, num_kv_heads: int) -> PackedPlan:
        if num_kv_heads not in self.kernels:
            self.kernels[num_kv_heads] = self.backend.build(self.batch, num_kv_heads)
        return self.kernels[num_kv_heads]
