"""Linear layers of the decoder. Modules get theirs from ``make_linear`` with their layer index
and role, so a LoRA-wrapped or quantized layer can stand in for the dense one per layer without
touching model code."""

from __future__ import annotations

import torch


def make_linear(in_features: int, out_features: int, bias: bool, *, layer_idx: int, name: str) -> torch.nn.Module:
    """A dense ``y = x W^T (+ b)`` today; ``layer_idx`` and ``name`` (``qkv_proj``, ``o_proj``,
    ``gate_up_proj``, ``down_proj``) say which layer a replacement would serve."""
    return torch.nn.Linear(in_features, out_features, bias=bias)
