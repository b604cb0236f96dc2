"""Two-level cascade decode attention, and dense decode attention: the baselines PAT is compared
with (FlashInfer's cascade attention, RelayAttention; one query per sequence).

The prefix common to *every* sequence of the batch is attended once, by all queries together
(one matrix product per KV head); each sequence's remaining context is attended densely, one
query per sequence; the two partial results are merged with their log-sum-exps. It removes the
redundant reads of a single system prompt but not of deeper sharing (a template shared by only
some of the sequences is still read once per sequence), which is what PAT adds.

Not an engine backend: the attention benchmark uses it as a baseline. It uses the same gather
and batched-product primitives as the prefix backend, so the comparison measures the
scheduling, not the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgecloud.llm.attention.backend import DecodeAttentionBackend, DecodeBatch
from edgecloud.llm.attention.prefix_tree import block_table_array


@dataclass
class CascadePlan:
    prefix_slots: torch.Tensor  # [prefix_len] cache slots of the common prefix
    chunks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (seqs, slots [n, L], hidden [n, L])
    kv_tokens_read: int


class CascadeDecodeAttention(DecodeAttentionBackend):
    """``max_gather_tokens`` bounds the suffix tokens gathered at once (memory), by sequence.

    With ``share_prefix=False`` nothing is shared and this is dense paged attention (one query
    per sequence over its whole context) on the same primitives: the fair dense baseline.
    """

    name = "cascade"

    def __init__(self, share_prefix: bool = True, max_gather_tokens: int = 1 << 15) -> None:
        self.share_prefix = share_prefix
        self.max_gather_tokens = max_gather_tokens

    def plan(self, batch: DecodeBatch) -> CascadePlan:
        bs = batch.block_size
        ctx = np.asarray(batch.context_lens, dtype=np.int64)
        table = block_table_array(batch.block_tables, ctx, bs)
        full = int((ctx // bs).min()) if batch.num_seqs else 0
        if self.share_prefix and batch.num_seqs > 1:
            same = (table[:, :full] == table[:1, :full]).all(axis=0)
            common = int(np.argmin(same)) if not same.all() else full
            # every sequence keeps at least one token of its own for the dense part
            common = min(common, int(ctx.min() - 1) // bs)
        else:
            common = 0  # nothing shared: the dense path is the whole context
        prefix_slots = (table[0, :common, None] * bs + np.arange(bs)).reshape(-1)
        suffix = ctx - common * bs
        chunks = []
        start = 0
        while start < batch.num_seqs:
            stop = start + 1
            while stop < batch.num_seqs and (stop + 1 - start) * suffix[start:stop + 1].max() <= \
                    self.max_gather_tokens:
                stop += 1
            width = int(suffix[start:stop].max())
            pos = common * bs + np.arange(width)[None, :]
            rows = np.arange(start, stop)[:, None]
            inside = pos < ctx[start:stop, None]
            cols = np.where(inside, pos // bs, 0)
            slots = np.where(inside, table[rows, cols] * bs + pos % bs, 0)
            chunks.append((
                torch.arange(start, stop, device=batch.device),
                torch.from_numpy(slots).to(batch.device),
                torch.from_numpy(~inside).to(batch.device),
            ))
            start = stop
        return CascadePlan(
            prefix_slots=torch.from_numpy(prefix_slots).to(batch.device),
            chunks=chunks,
            kv_tokens_read=len(prefix_slots) + sum(int(s.numel()) for _, s, _ in chunks),
        )

    def forward(self, plan: CascadePlan, query: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, scale: float) -> torch.Tensor:
        num_seqs, num_q_heads, head_dim = query.shape
        hkv = k_cache.shape[2]
        g = num_q_heads // hkv
        heads = torch.arange(hkv, device=query.device)
        k_rows = k_cache.view(-1, head_dim)
        v_rows = v_cache.view(-1, head_dim)
        # suffix: one query per sequence, [n * Hkv, g, L] against its own KV
        outs, lses = [], []
        for seqs, slots, hidden in plan.chunks:
            n, width = slots.shape
            index = (slots[:, None, :] * hkv + heads[None, :, None]).reshape(-1)
            q = query.index_select(0, seqs).reshape(n * hkv, g, head_dim)
            keys = k_rows.index_select(0, index).view(n * hkv, width, head_dim)
            scores = torch.bmm(q, keys.transpose(1, 2)).float().mul_(scale)
            scores.view(n, hkv, g, width).masked_fill_(hidden[:, None, None, :], float("-inf"))
            out, lse = _softmax_values(scores, v_rows.index_select(0, index).view(n * hkv, width, head_dim))
            outs.append(out.view(n, num_q_heads, head_dim))
            lses.append(lse.view(n, num_q_heads))
        out = torch.cat(outs)
        lse = torch.cat(lses)
        if plan.prefix_slots.numel() == 0:
            return out.to(query.dtype)
        # shared prefix: every query at once, [Hkv, B * g, L]
        length = plan.prefix_slots.numel()
        index = (heads[:, None] + plan.prefix_slots[None, :] * hkv).reshape(-1)
        q = query.view(num_seqs, hkv, g, head_dim).transpose(0, 1).reshape(hkv, num_seqs * g, head_dim)
        keys = k_rows.index_select(0, index).view(hkv, length, head_dim)
        scores = torch.bmm(q, keys.transpose(1, 2)).float().mul_(scale)
        p_out, p_lse = _softmax_values(scores, v_rows.index_select(0, index).view(hkv, length, head_dim))
        p_out = p_out.view(hkv, num_seqs, g, head_dim).transpose(0, 1).reshape(query.shape)
        p_lse = p_lse.view(hkv, num_seqs, g).transpose(0, 1).reshape(num_seqs, num_q_heads)
        peak = torch.maximum(lse, p_lse)
        w_suffix = (lse - peak).exp_()
        w_prefix = (p_lse - peak).exp_()
        merged = (out * w_suffix[..., None] + p_out * w_prefix[..., None]) / (w_suffix + w_prefix)[..., None]
        return merged.to(query.dtype)


def _softmax_values(scores: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    peak = scores.amax(dim=-1, keepdim=True)
    probs = scores.sub_(peak).exp_()
    denom = probs.sum(dim=-1, keepdim=True)
    out = torch.bmm(probs.to(values.dtype), values).float().div_(denom)
    return out, (peak + denom.log()).squeeze(-1)
