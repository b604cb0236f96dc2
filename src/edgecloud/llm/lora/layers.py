"""LoRA-capable linear layers: a base projection (dense or quantized) plus the step's adapters.

``attach_lora`` wraps each fused projection slot of a loaded model — the slots ``make_linear``
builds and ``quantize_model`` fills — in a ``LoRALinear`` after the weights are loaded (and
quantized), so the base layer stays whatever it is and its parameter names do not change. Linear
layers are called without the step context (dense, quantized and LoRA layers share
``forward(x)``), so a ``LoRALinear`` reads the step's segments from the ``LoRASlots`` it is bound
to, which the runner points at ``StepContext.lora`` for the duration of the forward pass — as the
attention layers are bound to their KV cache tensors.
"""

from __future__ import annotations

import torch

from edgecloud.llm.lora.adapter import FUSED_MODULES
from edgecloud.llm.lora.ops import sgmv
from edgecloud.llm.lora.slots import LoRASlots, ModuleSlots


class LoRALinear(torch.nn.Module):
    def __init__(self, base: torch.nn.Module, module: ModuleSlots, slots: LoRASlots) -> None:
        super().__init__()
        self.base = base
        self.lora = module
        self._slots = [slots]  # a list, so the slots are not registered as a submodule
        self.in_features = module.in_features
        self.out_features = sum(length for _, length in module.slices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        slots = self._slots[0]
        batch = slots.batch
        if batch is None or not batch.slots:
            return y
        if x.is_cuda:
            from edgecloud.llm.lora.triton_ops import sgmv_triton

            sgmv_triton(y, x, self.lora, batch, slots.step_max_rank if slots.pad_rank else 0)
        else:
            sgmv(y, x, self.lora, batch, slots.step_max_rank if slots.pad_rank else 0)
        return y


def attach_lora(model: torch.nn.Module, slots: LoRASlots) -> int:
    """Wraps every fused projection of every decoder layer; returns how many were wrapped. A layer
    whose block has no such projection (an MoE block's experts) is left as it is."""
    wrapped = 0
    for layer_idx, layer in enumerate(model.model.layers):
        for module_name in FUSED_MODULES:
            owner = layer.self_attn if module_name in ("qkv_proj", "o_proj") else layer.mlp
            base = getattr(owner, module_name, None)
            if base is None or isinstance(base, LoRALinear):
                continue
            setattr(owner, module_name, LoRALinear(base, slots.modules[(layer_idx, module_name)], slots))
            wrapped += 1
    return wrapped
