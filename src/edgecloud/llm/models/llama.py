"""Llama-family decoder (Llama 2/3, Mistral, Qwen2, Qwen3) over the paged KV cache.

The architectures differ only in configuration flags (``ModelConfig``): Qwen2 has q/k/v biases
and usually tied embeddings; Qwen3 normalises each head's q and k; Mistral has a sliding window
(the engine caps the context at the window, so full attention equals windowed attention). Tokens
of one step arrive flattened (``[num_tokens]``): prefill chunks first, then one token per
decoding request. Every module receives the step's ``StepContext``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from edgecloud.llm.config import ModelConfig
from edgecloud.llm.errors import ModelLoadError
from edgecloud.llm.layers.attention import make_attention
from edgecloud.llm.layers.mlp import make_mlp
from edgecloud.llm.layers.norm import RMSNorm
from edgecloud.llm.layers.rotary import RotaryEmbedding
from edgecloud.llm.step_context import StepContext, StepInterrupted


class DecoderLayer(torch.nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = make_attention(config, layer_idx, rotary)
        self.mlp = make_mlp(config, layer_idx)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        hidden = hidden + self.self_attn(positions, self.input_layernorm(hidden), ctx)
        return hidden + self.mlp(self.post_attention_layernorm(hidden), ctx)


class LlamaModel(torch.nn.Module):
    def __init__(self, config: ModelConfig, max_positions: int) -> None:
        super().__init__()
        rotary = RotaryEmbedding(config.rope, config.head_dim, max_positions)
        self.embed_tokens = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = torch.nn.ModuleList(DecoderLayer(config, i, rotary) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(torch.nn.Module):
    # Checkpoint projections the engine fuses: (fused parameter, checkpoint name, shard index).
    STACKED = (
        ("qkv_proj", "q_proj", 0),
        ("qkv_proj", "k_proj", 1),
        ("qkv_proj", "v_proj", 2),
        ("gate_up_proj", "gate_proj", 0),
        ("gate_up_proj", "up_proj", 1),
    )

    def __init__(self, config: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, max_positions)
        self.lm_head = torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: StepContext, logits_rows: torch.Tensor
    ) -> torch.Tensor:
        """Runs one step; returns float32 logits for the rows in ``logits_rows`` only."""
        hidden = self.model.embed_tokens(input_ids)
        last = len(self.model.layers) - 1
        stack = ctx.decode_stack
        if stack is not None and ctx.interrupt is None:  # one token: every layer (and the head) in one call
            logits = stack(hidden, positions, ctx, 0, last + 1, logits=logits_rows.numel() == 1)
            if logits is not None:
                return logits
        else:
            for i, layer in enumerate(self.model.layers):
                if stack is not None:
                    stack(hidden, positions, ctx, i, i + 1)
                else:
                    hidden = layer(positions, hidden, ctx)
                if ctx.interrupt is not None and i < last and ctx.interrupt():
                    raise StepInterrupted(i)
        hidden = self.model.norm(hidden[logits_rows])
        return self.lm_head(hidden).float()

    def _shard(self, fused: str, shard: int) -> tuple[int, int]:
        """(offset, rows) of one checkpoint projection inside a fused weight."""
        c = self.config
        if fused == "qkv_proj":
            q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
            return ((0, q), (q, kv), (q + kv, kv))[shard]
        return (shard * c.intermediate_size, c.intermediate_size)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Copies checkpoint tensors (HF names, streamed one at a time) into the model's
        parameters, fusing q/k/v and gate/up. Returns the names of the parameters written."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        unexpected: list[str] = []
        for name, tensor in weights:
            if name.endswith("rotary_emb.inv_freq") or (self.config.tie_word_embeddings and name == "lm_head.weight"):
                continue
            target, rows = name, None
            for fused, part, shard in self.STACKED:
                if f".{part}." in name:
                    target = name.replace(f".{part}.", f".{fused}.")
                    rows = self._shard(fused, shard)
                    break
            param = params.get(target)
            if param is None:
                unexpected.append(name)
                continue
            dest = param.data if rows is None else param.data.narrow(0, *rows)
            if tuple(dest.shape) != tuple(tensor.shape):
                raise ModelLoadError(
                    f"tensor {name} has shape {tuple(tensor.shape)}, config.json implies {tuple(dest.shape)}"
                )
            dest.copy_(tensor)
            loaded.add(target if rows is None else f"{target}#{rows[0]}")
        if unexpected:
            raise ModelLoadError(
                f"checkpoint has tensors {self.config.architecture} does not: {unexpected[:8]}"
                f"{'...' if len(unexpected) > 8 else ''}"
            )
        return loaded

    def expected_weights(self) -> set[str]:
        """What ``load_weights`` must have written for the model to be complete."""
        expected: set[str] = set()
        fused_shards = {fused: sorted({s for f, _, s in self.STACKED if f == fused}) for fused, _, _ in self.STACKED}
        for name, _ in self.named_parameters():
            fused = next((f for f in fused_shards if f".{f}." in name), None)
            if fused is None:
                expected.add(name)
            else:
                expected.update(f"{name}#{self._shard(fused, s)[0]}" for s in fused_shards[fused])
        return expected
