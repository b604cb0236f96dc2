"""Self-attention of a decoder layer over the paged KV cache.

q, k and v come from one fused projection; rotary embeddings turn q and k; the new K/V are
written into the layer's cache slots; prefill chunks attend through ``prefill_attention`` and
decoding tokens through the step's decode backend. The runner binds each layer's cache tensors
(``kv_cache``) once, after allocating them.
"""

from __future__ import annotations

import torch

from edgecloud.llm.attention.prefill import prefill_attention
from edgecloud.llm.config import ModelConfig
from edgecloud.llm.layers.linear import make_linear
from edgecloud.llm.layers.norm import RMSNorm
from edgecloud.llm.layers.rotary import RotaryEmbedding
from edgecloud.llm.step_context import StepContext


class Attention(torch.nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv_proj = make_linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, config.qkv_bias, layer_idx=layer_idx, name="qkv_proj"
        )
        self.o_proj = make_linear(self.q_size, config.hidden_size, config.o_bias, layer_idx=layer_idx, name="o_proj")
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps) if config.qk_norm else None
        self.rotary = rotary
        self.kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def cache_shape(config: ModelConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per token: the K and the V entry of the layer's cache."""
        return (config.num_key_value_heads, config.head_dim), (config.num_key_value_heads, config.head_dim)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        assert self.kv_cache is not None, "the runner binds the KV cache before the first step"
        step = ctx.attention_for(self.layer_idx)
        num_tokens = hidden.shape[0]
        qkv = self.qkv_proj(hidden)
        v = qkv[:, self.q_size + self.kv_size :].view(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q = qkv[:, : self.q_size].view(num_tokens, self.num_heads, self.head_dim)
            k = qkv[:, self.q_size : self.q_size + self.kv_size].view(num_tokens, self.num_kv_heads, self.head_dim)
            q, k = self.rotary(positions, self.q_norm(q), self.k_norm(k))
        else:  # q and k heads are adjacent in the fused output: rotate them with one set of kernels
            qk_heads = self.num_heads + self.num_kv_heads
            qk = self.rotary.rotate(positions, qkv[:, : qk_heads * self.head_dim].view(num_tokens, qk_heads, -1))
            q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        k_cache, v_cache = self.kv_cache
        flat_shape = (-1, self.num_kv_heads, self.head_dim)
        k_cache.view(flat_shape).index_copy_(0, step.slot_mapping, k.to(k_cache.dtype))
        v_cache.view(flat_shape).index_copy_(0, step.slot_mapping, v.to(v_cache.dtype))

        if not step.prefill and step.decode_backend is not None:  # a decode-only step: no copy into `out`
            out = step.decode_backend.forward(step.decode_plan, q, k_cache, v_cache, self.scale)
            return self.o_proj(out.reshape(num_tokens, self.q_size))
        out = torch.empty_like(q)
        for seg in step.prefill:
            rows = slice(seg.query_start, seg.query_start + seg.query_len)
            out[rows] = prefill_attention(seg, q[rows], k[rows], v[rows], k_cache, v_cache, self.scale)
        if step.decode_backend is not None:
            decode_q = q[step.num_prefill_tokens :]
            out[step.num_prefill_tokens :] = step.decode_backend.forward(
                step.decode_plan, decode_q, k_cache, v_cache, self.scale
            )
        return self.o_proj(out.view(num_tokens, self.q_size))


def attention_class(config: ModelConfig, layer_idx: int) -> type[torch.nn.Module]:
    if config.mla is not None:
        from edgecloud.llm.layers.mla import MultiHeadLatentAttention

        return MultiHeadLatentAttention
    return Attention


def make_attention(config: ModelConfig, layer_idx: int, rotary: RotaryEmbedding) -> torch.nn.Module:
    return attention_class(config, layer_idx)(config, layer_idx, rotary)


def kv_cache_shape(config: ModelConfig, layer_idx: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """What a layer's attention keeps per token (its K and V entries), as the module declares it:
    the runner allocates ``[num_blocks, block_size, *shape]`` for each."""
    return attention_class(config, layer_idx).cache_shape(config)  # type: ignore[attr-defined]
