"""Feed-forward blocks. Decoder layers get theirs from ``make_mlp`` with their layer index, so an
MoE block can stand in for the dense one per layer without touching the model code; every block
takes the step context (an MoE block reads its expert map and counters there)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgecloud.llm.config import ModelConfig
from edgecloud.llm.errors import ModelLoadError
from edgecloud.llm.layers.linear import make_linear
from edgecloud.llm.step_context import StepContext

_ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


class GatedMLP(torch.nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x)), with gate and up fused into one matmul."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str, bias: bool, layer_idx: int) -> None:
        super().__init__()
        if act not in _ACTIVATIONS:
            raise ModelLoadError(f"config.json: hidden_act={act!r} is not supported ({sorted(_ACTIVATIONS)})")
        self.intermediate_size = intermediate_size
        self.gate_up_proj = make_linear(
            hidden_size, 2 * intermediate_size, bias, layer_idx=layer_idx, name="gate_up_proj"
        )
        self.down_proj = make_linear(intermediate_size, hidden_size, bias, layer_idx=layer_idx, name="down_proj")
        self.act = _ACTIVATIONS[act]

    def forward(self, x: torch.Tensor, ctx: StepContext | None = None) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(self.act(gate) * up)


def make_mlp(config: ModelConfig, layer_idx: int) -> torch.nn.Module:
    if config.moe is not None and layer_idx in config.moe.layers:
        from edgecloud.llm.moe.layer import SparseMoE  # the MoE package builds on this module

        return SparseMoE(config, layer_idx)
    return GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act, config.mlp_bias, layer_idx)
