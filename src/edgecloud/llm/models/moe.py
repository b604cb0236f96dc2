"""Mixture-of-experts decoders: Mixtral, Qwen2-MoE, Qwen3-MoE and the DeepSeek-V3 layout.

They are the Llama decoder with other parts in some layers, which ``make_mlp`` and
``make_attention`` choose from ``ModelConfig`` (``moe``: which layers are MoE blocks, how they
route, shared experts; ``mla``: latent attention). What this family adds is its checkpoint layout:

* experts, stored per expert on disk (``mlp.experts.{e}.gate_proj/up_proj/down_proj``, Mixtral's
  ``block_sparse_moe.experts.{e}.w1/w3/w2``) or fused as transformers 5 holds them
  (``mlp.experts.gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``), go into the fused slot weights
  ``mlp.experts.w13`` / ``w2`` with expert ``e`` in slot ``e``;
* the router (``gate.weight``, DeepSeek's ``gate.e_score_correction_bias``), shared experts
  (Qwen2-MoE's ``shared_expert`` with its ``shared_expert_gate``, DeepSeek's ``shared_experts``);
* MLA's projections under their own names; DeepSeek-V3's multi-token-prediction layers (numbered
  past ``num_hidden_layers``) are not part of the decoder and are skipped, as transformers skips them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from edgecloud.llm.errors import ModelLoadError
from edgecloud.llm.models.llama import LlamaForCausalLM

_EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight$")
_FUSED_EXPERTS = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)$")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
# Checkpoint projections the engine fuses: checkpoint name -> (fused parameter, shard).
_STACKED = {"q_proj": ("qkv_proj", 0), "k_proj": ("qkv_proj", 1), "v_proj": ("qkv_proj", 2),
            "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}


class MoEForCausalLM(LlamaForCausalLM):
    def _checkpoint_name(self, name: str) -> str | None:
        """The engine's name for a checkpoint tensor, or None for one it does not use."""
        if name.endswith("rotary_emb.inv_freq") or (self.config.tie_word_embeddings and name == "lm_head.weight"):
            return None
        layer = _LAYER.match(name)
        if layer and int(layer.group(1)) >= self.config.num_hidden_layers:
            return None  # DeepSeek-V3's multi-token-prediction module
        name = name.replace(".block_sparse_moe.", ".mlp.")
        return name.replace(".mlp.shared_expert.", ".mlp.shared_experts.")

    def _shards(self, param: str, shape: torch.Size) -> list[tuple[int, int]]:
        """(offset, rows) of each checkpoint projection inside a fused q/k/v or gate/up weight."""
        if param.endswith("gate_up_proj.weight"):
            half = shape[0] // 2
            return [(0, half), (half, half)]
        c = self.config
        q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        return [(0, q), (q, kv), (q + kv, kv)]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        unexpected: list[str] = []

        def put(param_name: str, dest: torch.Tensor, tensor: torch.Tensor, source: str, key: str) -> None:
            if tuple(dest.shape) != tuple(tensor.shape):
                raise ModelLoadError(
                    f"tensor {source} has shape {tuple(tensor.shape)}, config.json implies {tuple(dest.shape)}")
            dest.copy_(tensor)
            loaded.add(key)

        for source, tensor in weights:
            name = self._checkpoint_name(source)
            if name is None:
                continue
            expert = _EXPERT.match(name)
            fused = _FUSED_EXPERTS.match(name)
            if expert:
                prefix, index, part = expert.group(1), int(expert.group(2)), expert.group(3)
                w13, w2 = params.get(f"{prefix}.w13"), params.get(f"{prefix}.w2")
                if w13 is None or w2 is None or index >= w13.shape[0]:
                    unexpected.append(source)
                    continue
                half = w13.shape[1] // 2
                if part in ("w2", "down_proj"):
                    put(f"{prefix}.w2", w2.data[index], tensor, source, f"{prefix}.w2#{index}")
                else:
                    second = part in ("w3", "up_proj")
                    put(f"{prefix}.w13", w13.data[index, half * second : half * (second + 1)], tensor, source,
                        f"{prefix}.w13#{index}.{'up' if second else 'gate'}")
                continue
            if fused:
                prefix, part = fused.groups()
                target = f"{prefix}.{'w13' if part == 'gate_up_proj' else 'w2'}"
                param = params.get(target)
                if param is None:
                    unexpected.append(source)
                    continue
                put(target, param.data, tensor, source, target)
                loaded.update(self._expected_of(target, param))
                continue
            stacked = None if self.config.mla is not None and ".self_attn." in name else next(
                (part for part in _STACKED if f".{part}." in name), None)
            if stacked is not None:
                fused_name, shard = _STACKED[stacked]
                target = name.replace(f".{stacked}.", f".{fused_name}.")
                param = params.get(target)
                if param is None:
                    unexpected.append(source)
                    continue
                offset, rows = self._shards(target, param.shape)[shard]
                put(target, param.data.narrow(0, offset, rows), tensor, source, f"{target}#{offset}")
                continue
            param = params.get(name)
            if param is None:
                unexpected.append(source)
                continue
            put(name, param.data, tensor, source, name)
        if unexpected:
            raise ModelLoadError(
                f"checkpoint has tensors {self.config.architecture} does not: {unexpected[:8]}"
                f"{'...' if len(unexpected) > 8 else ''}"
            )
        return loaded

    def _expected_of(self, name: str, param: torch.Tensor) -> set[str]:
        if name.endswith(".experts.w13"):
            return {f"{name}#{e}.{part}" for e in range(param.shape[0]) for part in ("gate", "up")}
        if name.endswith(".experts.w2"):
            return {f"{name}#{e}" for e in range(param.shape[0])}
        if name.endswith(("qkv_proj.weight", "qkv_proj.bias", "gate_up_proj.weight")):
            return {f"{name}#{offset}" for offset, _ in self._shards(name, param.shape)}
        return {name}

    def expected_weights(self) -> set[str]:
        expected: set[str] = set()
        for name, param in self.named_parameters():
            expected |= self._expected_of(name, param)
        return expected
