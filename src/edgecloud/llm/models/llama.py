"""Llama-family decoder (Llama 2/3, Mistral, Qwen2) over the paged KV cache.

The three architectures differ only in configuration: Qwen2 has q/k/v biases and usually tied
embeddings; Mistral has a sliding window (the engine caps the context at the window, so full
attention equals windowed attention). Tokens of one step arrive flattened (``[num_tokens]``):
prefill chunks first, then one token per decoding sequence.
"""

from __future__ import annotations

import torch

from edgecloud.llm.attention.prefill import StepAttention, prefill_attention
from edgecloud.llm.config import ModelConfig
from edgecloud.llm.layers.mlp import make_mlp
from edgecloud.llm.layers.norm import RMSNorm
from edgecloud.llm.layers.rotary import RotaryEmbedding


class Attention(torch.nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.num_kv_heads * self.head_dim
        self.scale = self.head_dim**-0.5
        self.qkv_proj = torch.nn.Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias
        )
        # Qwen2 biases q/k/v only; Llama's attention_bias covers o_proj too.
        o_bias = config.attention_bias and config.model_type != "qwen2"
        self.o_proj = torch.nn.Linear(self.q_size, config.hidden_size, bias=o_bias)
        self.rotary = rotary

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        step: StepAttention,
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.view(num_tokens, self.num_kv_heads, self.head_dim)
        q, k = self.rotary(positions, q, k)
        k_cache, v_cache = kv_cache
        flat_shape = (-1, self.num_kv_heads, self.head_dim)
        k_cache.view(flat_shape).index_copy_(0, step.slot_mapping, k.to(k_cache.dtype))
        v_cache.view(flat_shape).index_copy_(0, step.slot_mapping, v.to(v_cache.dtype))

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


class DecoderLayer(torch.nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = Attention(config, rotary)
        self.mlp = make_mlp(config, layer_idx)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        step: StepAttention,
    ) -> torch.Tensor:
        hidden = hidden + self.self_attn(positions, self.input_layernorm(hidden), kv_cache, step)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class LlamaModel(torch.nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int) -> None:
        super().__init__()
        rotary = RotaryEmbedding(config.rope, config.head_dim, max_positions)
        self.embed_tokens = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = torch.nn.ModuleList(
            DecoderLayer(config, i, rotary) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(torch.nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, max_positions)
        self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        step: StepAttention,
        logits_rows: torch.Tensor,
    ) -> torch.Tensor:
        """Runs one step; returns float32 logits for the rows in ``logits_rows`` only."""
        hidden = self.model.embed_tokens(input_ids)
        for layer, kv_cache in zip(self.model.layers, kv_caches, strict=True):
            hidden = layer(positions, hidden, kv_cache, step)
        hidden = self.model.norm(hidden[logits_rows])
        return self.lm_head(hidden).float()
