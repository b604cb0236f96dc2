"""Dense paged decode attention: every sequence reads its whole context from the paged cache.

This is the baseline decode path (vLLM's PagedAttention semantics): one query per sequence,
KV gathered through the block table, one batched matrix product per layer. Shared prefixes are
read once per sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edgecloud.llm.attention.backend import DecodeAttentionBackend, DecodeBatch


@dataclass
class PagedDecodePlan:
    block_table: torch.Tensor  # [num_seqs, max_blocks]
    mask: torch.Tensor  # [num_seqs, 1, 1, max_blocks * block_size] True inside the context


class PagedDecodeAttention(DecodeAttentionBackend):
    name = "paged"

    def plan(self, batch: DecodeBatch) -> PagedDecodePlan:
        table = batch.block_table_tensor()
        positions = torch.arange(table.shape[1] * batch.block_size, device=table.device)
        mask = positions[None, :] < batch.context_lens_tensor()[:, None]
        return PagedDecodePlan(block_table=table, mask=mask[:, None, None, :])

    def forward(
        self,
        plan: PagedDecodePlan,
        query: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        num_seqs, _, head_dim = query.shape
        num_kv_heads = k_cache.shape[2]
        # Gathering whole blocks copies contiguous runs of block_size * heads * dim elements,
        # several times faster than gathering token by token.
        keys = k_cache[plan.block_table].view(num_seqs, -1, num_kv_heads, head_dim).transpose(1, 2)
        values = v_cache[plan.block_table].view(num_seqs, -1, num_kv_heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(
            query.unsqueeze(2), keys, values, attn_mask=plan.mask, scale=scale, enable_gqa=True
        )
        return out.squeeze(2)
