"""The device tier of the adapter cache: a fixed number of slots in every adapted module.

Each fused module (``qkv_proj``, ``o_proj``, ``gate_up_proj``, ``down_proj`` of every layer) owns
two pools, in vLLM's layout: ``a[slot, slice, :rank, :in]`` and ``b[slot, :out, :rank]`` (a slice's
rows of ``b`` are its part of the fused output). A slot holds one adapter at a time, up to
``max_lora_rank``; the rest of the slot is zero, so a kernel that runs past an adapter's rank (a
padded, rank-oblivious batch) adds nothing wrong, only work. Per slot and module: the adapter's
rank there and each slice's scale (0 for a slice the adapter does not target).
"""

from __future__ import annotations

import torch

from edgecloud.llm.config import ModelConfig
from edgecloud.llm.lora.adapter import FUSED_MODULES, FUSED_SLICES, LoRAAdapter, fused_slices
from edgecloud.llm.lora.batch import LoRABatch


class ModuleSlots:
    """The pools of one fused module."""

    def __init__(self, in_features: int, slices: list[tuple[int, int]], num_slots: int, max_rank: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.in_features = in_features
        self.slices = slices  # (out offset, out length) per slice
        out = sum(length for _, length in slices)
        self.a = torch.zeros(num_slots, len(slices), max_rank, in_features, dtype=dtype, device=device)
        self.b = torch.zeros(num_slots, out, max_rank, dtype=dtype, device=device)
        self.rank = [0] * num_slots
        self.scale = [[0.0] * len(slices) for _ in range(num_slots)]
        self.rank_t = torch.zeros(num_slots, dtype=torch.int32, device=device)  # for the GPU kernels
        self.scale_t = torch.zeros(num_slots, len(slices), dtype=torch.float32, device=device)

    def clear(self, slot: int) -> None:
        r = self.rank[slot]
        if r:
            self.a[slot, :, :r].zero_()
            self.b[slot, :, :r].zero_()
        self.rank[slot] = 0
        self.scale[slot] = [0.0] * len(self.slices)
        self.rank_t[slot] = 0
        self.scale_t[slot].zero_()


class LoRASlots:
    """Device slots of every adapted module, and the step's ``LoRABatch`` while the model runs."""

    def __init__(self, mc: ModelConfig, num_slots: int, max_rank: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.num_slots = num_slots
        self.max_rank = max_rank
        self.dtype = dtype
        self.device = device
        slices = fused_slices(mc)
        ins = {"qkv_proj": mc.hidden_size, "o_proj": mc.num_attention_heads * mc.head_dim,
               "gate_up_proj": mc.hidden_size, "down_proj": mc.intermediate_size}
        self.modules = {
            (layer, module): ModuleSlots(ins[module], slices[module], num_slots, max_rank, dtype, device)
            for layer in range(mc.num_hidden_layers) for module in FUSED_MODULES
        }
        self.batch: LoRABatch | None = None  # set by the runner for the duration of one forward pass
        self.pad_rank = False  # True: every segment computes up to the step's largest rank (rank-oblivious)
        self.step_max_rank = 0

    def write(self, slot: int, adapter: LoRAAdapter) -> None:
        """Copies an adapter into a slot (host -> device), replacing whatever was there."""
        for module in self.modules.values():
            module.clear(slot)
        for (layer, proj), pair in adapter.pairs.items():
            module_name, index = FUSED_SLICES[proj]
            m = self.modules[(layer, module_name)]
            offset, length = m.slices[index]
            r = pair.rank
            m.a[slot, index, :r].copy_(pair.a)
            m.b[slot, offset : offset + length, :r].copy_(pair.b)
            m.rank[slot] = max(m.rank[slot], r)
            m.scale[slot][index] = pair.scale
            m.rank_t[slot] = m.rank[slot]
            m.scale_t[slot, index] = pair.scale

    def clear(self, slot: int) -> None:
        for module in self.modules.values():
            module.clear(slot)
