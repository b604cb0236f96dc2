"""Dense paged decode attention: every sequence reads its whole context from the paged cache.

This is the baseline decode path (vLLM's PagedAttention semantics): one query per sequence,
KV gathered through the block table, one batched matrix product per layer. Shared prefixes are
read once per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgecloud.llm.attention.backend import DecodeAttentionBackend, DecodeBatch


@dataclass
class PagedDecodePlan:
    slots: torch.Tensor  # [num_seqs, max_len] flat cache slot per position
    mask: torch.Tensor  # [num_seqs, 1, 1, max_len] True where the position is inside the context


class PagedDecodeAttention(DecodeAttentionBackend):
    name = "paged"

    def plan(self, batch: DecodeBatch) -> PagedDecodePlan:
        table = batch.block_table_tensor()
        bs = batch.block_size
        offsets = torch.arange(bs, device=table.device)
        slots = (table[:, :, None] * bs + offsets).reshape(batch.num_seqs, -1)
        positions = torch.arange(slots.shape[1], device=table.device)
        mask = positions[None, :] < batch.context_lens_tensor()[:, None]
        return PagedDecodePlan(slots=slots, mask=mask[:, None, None, :])

    def forward(
        self,
        plan: PagedDecodePlan,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        num_seqs, num_q_heads, head_dim = query.shape
        num_kv_heads = k_cache.shape[2]
        group = num_q_heads // num_kv_heads
        flat_k = k_cache.view(-1, num_kv_heads, head_dim)
        flat_v = v_cache.view(-1, num_kv_heads, head_dim)
        # [B, L, Hkv, D] -> [B, Hkv, L, D]
        keys = flat_k[plan.slots].transpose(1, 2)
        values = flat_v[plan.slots].transpose(1, 2)
        q = query.view(num_seqs, num_kv_heads, group, head_dim)
        scores = torch.matmul(q, keys.transpose(-1, -2)).float() * scale
        scores.masked_fill_(~plan.mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(values.dtype)
        out = torch.matmul(probs, values)
        return out.reshape(num_seqs, num_q_heads, head_dim).to(query.dtype)
