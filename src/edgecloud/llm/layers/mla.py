"""Multi-head latent attention (MLA; DeepSeek-V2 sec. 2.1, used by DeepSeek-V3) over the paged cache.

Keys and values come from one compressed latent per token: ``kv_a_proj_with_mqa`` maps the hidden
state to a ``kv_lora_rank`` latent (RMS-normalised) plus a ``qk_rope_head_dim`` rotary key shared by
all heads; ``kv_b_proj`` expands the latent into each head's key part without position
(``qk_nope_head_dim``) and its value (``v_head_dim``, a different size). Queries go through a low-rank
``q_a_proj`` -> RMSNorm -> ``q_b_proj`` (or one ``q_proj``), split into the same two parts.

The cache keeps what transformers' cache keeps, the compressed form: per token and layer, the
normalised latent (the layer's "K" tensor, ``[blocks, block_size, 1, kv_lora_rank]``) and the rotated
rotary key ("V" tensor, ``[blocks, block_size, 1, qk_rope_head_dim]``): ``kv_lora_rank +
qk_rope_head_dim`` elements instead of ``2 x heads x head_dim``. ``cache_shape`` declares it, and
the runner allocates it. Attention expands the context's latents with ``kv_b_proj`` and attends with
keys of ``qk_nope_head_dim + qk_rope_head_dim`` and values of ``v_head_dim``, as transformers does
(the "absorbed" form that folds ``kv_b_proj`` into the query and output is faster at long contexts
but computes in another order). Decoding reads the paged cache through the paged backend's plan.

DeepSeek stores the rotary dimensions as interleaved pairs; de-interleaving them first
(evens then odds) turns its rotation into the half-split rotation the engine's ``RotaryEmbedding``
applies, with the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgecloud.llm.attention.paged import PagedDecodePlan
from edgecloud.llm.attention.prefill import PrefillSegment
from edgecloud.llm.config import ModelConfig
from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.layers.linear import make_linear
from edgecloud.llm.layers.norm import RMSNorm
from edgecloud.llm.layers.rotary import RotaryEmbedding, _yarn_mscale
from edgecloud.llm.step_context import StepContext

# DeepSeek's q_a_layernorm and kv_a_layernorm use RMSNorm's default epsilon, not rms_norm_eps.
LATENT_NORM_EPS = 1e-6


class MultiHeadLatentAttention(torch.nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        mla = config.mla
        assert mla is not None
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.nope_dim, self.rope_dim, self.v_dim = mla.qk_nope_head_dim, mla.qk_rope_head_dim, mla.v_head_dim
        self.kv_lora_rank = mla.kv_lora_rank
        self.qk_head_dim = self.nope_dim + self.rope_dim
        self.interleaved = mla.rope_interleave
        hidden, heads = config.hidden_size, self.num_heads
        if mla.q_lora_rank is None:
            self.q_proj = make_linear(hidden, heads * self.qk_head_dim, False, layer_idx=layer_idx, name="q_proj")
        else:
            self.q_a_proj = make_linear(hidden, mla.q_lora_rank, config.qkv_bias, layer_idx=layer_idx, name="q_a_proj")
            self.q_a_layernorm = RMSNorm(mla.q_lora_rank, LATENT_NORM_EPS)
            self.q_b_proj = make_linear(mla.q_lora_rank, heads * self.qk_head_dim, False, layer_idx=layer_idx,
                                        name="q_b_proj")
        self.kv_a_proj_with_mqa = make_linear(hidden, mla.kv_lora_rank + self.rope_dim, config.qkv_bias,
                                              layer_idx=layer_idx, name="kv_a_proj_with_mqa")
        self.kv_a_layernorm = RMSNorm(mla.kv_lora_rank, LATENT_NORM_EPS)
        self.kv_b_proj = make_linear(mla.kv_lora_rank, heads * (self.nope_dim + self.v_dim), False,
                                     layer_idx=layer_idx, name="kv_b_proj")
        self.o_proj = make_linear(heads * self.v_dim, hidden, config.o_bias, layer_idx=layer_idx, name="o_proj")
        self.scale = self.qk_head_dim**-0.5
        rope = config.rope
        if rope.rope_type != "default" and rope.mscale_all_dim:
            # YaRN's mscale_all_dim scales the whole softmax, rotary and non-rotary parts alike.
            self.scale *= _yarn_mscale(rope.factor, rope.mscale_all_dim) ** 2
        self.rotary = rotary
        self.kv_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @staticmethod
    def cache_shape(config: ModelConfig) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per token: the latent (the layer's K tensor) and the rotary key (its V tensor)."""
        assert config.mla is not None
        return (1, config.mla.kv_lora_rank), (1, config.mla.qk_rope_head_dim)

    def _deinterleave(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((x[..., 0::2], x[..., 1::2]), dim=-1) if self.interleaved else x

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        assert self.kv_cache is not None, "the runner binds the KV cache before the first step"
        step = ctx.attention_for(self.layer_idx)
        num_tokens = hidden.shape[0]
        q = self.q_proj(hidden) if hasattr(self, "q_proj") else self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden)))
        q = q.view(num_tokens, self.num_heads, self.qk_head_dim)
        q_nope, q_rot = q.split([self.nope_dim, self.rope_dim], dim=-1)
        latent, k_rot = self.kv_a_proj_with_mqa(hidden).split([self.kv_lora_rank, self.rope_dim], dim=-1)
        latent = self.kv_a_layernorm(latent)
        q_rot, k_rot = self.rotary(positions, self._deinterleave(q_rot), self._deinterleave(k_rot.unsqueeze(1)))
        query = torch.cat((q_nope, q_rot), dim=-1)
        latent_cache, rope_cache = self.kv_cache
        latent_cache.view(-1, self.kv_lora_rank).index_copy_(0, step.slot_mapping, latent.to(latent_cache.dtype))
        rope_cache.view(-1, self.rope_dim).index_copy_(0, step.slot_mapping, k_rot[:, 0].to(rope_cache.dtype))

        out = query.new_empty(num_tokens, self.num_heads, self.v_dim)
        for seg in step.prefill:
            rows = slice(seg.query_start, seg.query_start + seg.query_len)
            out[rows] = self._prefill(seg, query[rows], latent[rows], k_rot[rows, 0])
        if step.decode_backend is not None:
            plan = step.decode_plan
            if not isinstance(plan, PagedDecodePlan):
                raise InvalidRequestError(
                    "multi-head latent attention decodes through the paged backend; "
                    f"attention_backend={step.decode_backend.name!r} is not supported for it", "attention_backend")
            out[step.num_prefill_tokens :] = self._decode(plan, query[step.num_prefill_tokens :])
        return self.o_proj(out.reshape(num_tokens, self.num_heads * self.v_dim))

    def _expand(self, latent: torch.Tensor, k_rot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Context latents ``[..., S, kv_lora_rank]`` and rotary keys ``[..., S, rope]`` -> keys
        ``[..., heads, S, qk_head_dim]`` and values ``[..., heads, S, v_dim]``."""
        kv = self.kv_b_proj(latent).unflatten(-1, (self.num_heads, self.nope_dim + self.v_dim))
        k_nope, value = kv.split([self.nope_dim, self.v_dim], dim=-1)
        k_rot = k_rot.unsqueeze(-2).expand(*k_nope.shape[:-1], self.rope_dim)
        key = torch.cat((k_nope, k_rot), dim=-1)
        return key.transpose(-3, -2), value.transpose(-3, -2)

    def _prefill(self, seg: PrefillSegment, query: torch.Tensor, latent: torch.Tensor,
                 k_rot: torch.Tensor) -> torch.Tensor:
        if seg.mask is not None:  # the chunk attends to a cached prefix too: read the context back
            latent_cache, rope_cache = self.kv_cache  # type: ignore[misc]
            latent = latent_cache.view(-1, self.kv_lora_rank).index_select(0, seg.context_slots)
            k_rot = rope_cache.view(-1, self.rope_dim).index_select(0, seg.context_slots)
        key, value = self._expand(latent.to(query.dtype), k_rot.to(query.dtype))
        # 3-D on purpose: unlike Llama's prefill (attention/prefill.py), a batch dimension gains nothing
        # here: torch's fused CPU flash kernel does not take a value head size unlike the query's (MLA's
        # 128 vs 192), so SDPA runs its math path either way (checked with torch 2.13, both outputs equal).
        out = F.scaled_dot_product_attention(query.transpose(0, 1), key, value, attn_mask=seg.mask,
                                             is_causal=seg.mask is None, scale=self.scale)
        return out.transpose(0, 1)

    def _decode(self, plan: PagedDecodePlan, query: torch.Tensor) -> torch.Tensor:
        latent_cache, rope_cache = self.kv_cache  # type: ignore[misc]
        out = query.new_empty(query.shape[0], self.num_heads, self.v_dim)
        for group in plan.groups:
            rows = group.rows.shape[0]
            blocks = group.block_table.flatten()
            latent = latent_cache.index_select(0, blocks).view(rows, -1, self.kv_lora_rank)
            k_rot = rope_cache.index_select(0, blocks).view(rows, -1, self.rope_dim)
            key, value = self._expand(latent.to(query.dtype), k_rot.to(query.dtype))
            result = F.scaled_dot_product_attention(query[group.rows].unsqueeze(2), key, value,
                                                    attn_mask=group.mask, scale=self.scale)
            out[group.rows] = result.squeeze(2)
        return out
