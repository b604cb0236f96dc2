"""Weight-only quantized linear layers (``make_linear``'s stand-ins for the dense ``nn.Linear``).

``Int4Linear`` keeps Q4_1 groups in torch's CPU int4 layout and multiplies with
``aten._weight_int4pack_mm_for_cpu``: weights stay 4-bit in memory and are expanded inside the
kernel's registers. That kernel is vectorized (AVX-512) for bfloat16 activations only (its fp32
path is a scalar loop, 40x slower here), so activations are rounded to bf16 for the product, and
the group scale ``d`` and offset ``m + 8d`` are held in bf16 (the kernel computes
``(q - 8) * scale + zero``): the model differs from its dequantized fp32 twin by those roundings,
which the perplexity report measures.

``Int8Linear`` keeps Q8_0 groups (int8 codes and their fp16 scales) and expands one slice of rows
at a time into the activation dtype right before the product, so the expanded slice stays in
cache and the weights are read from memory at one byte each. In fp32 the expansion is exact
(``d * q`` fits fp32's mantissa): an int8 model computes what the dense model with the Q8_0
weights dequantized computes, up to summation order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgecloud.llm.quant.groups import GROUP, Int4Groups, Int8Groups

# Rows expanded at once by Int8Linear: 1024 rows x 1536 inputs x 4 bytes = 6 MiB, within L2 + L3 share.
_INT8_ROWS_PER_SLICE = 1024


class Int4Linear(torch.nn.Module):
    def __init__(self, weight: Int4Groups, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        n, k = weight.q.shape
        self.in_features, self.out_features = k, n
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(weight.q.to(torch.int32).contiguous(), 1)
        scale = weight.d.float()
        zero = weight.m.float() + 8 * scale
        scales_and_zeros = torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)  # [K / 32, N, 2]
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scales_and_zeros)
        y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    @property
    def weight_bytes(self) -> int:
        return self.packed.numel() + self.scales_and_zeros.numel() * 2

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, q4_1 groups of {GROUP}"


class Int8Linear(torch.nn.Module):
    def __init__(self, weight: Int8Groups, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        n, k = weight.q.shape
        self.in_features, self.out_features = k, n
        self.register_buffer("q", weight.q.contiguous().view(n, k // GROUP, GROUP))
        self.register_buffer("d", weight.d.float().unsqueeze(-1).contiguous())  # fp16 -> fp32 is exact
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        parts = []
        for start in range(0, self.out_features, _INT8_ROWS_PER_SLICE):
            rows = slice(start, start + _INT8_ROWS_PER_SLICE)
            weight = (self.q[rows].to(x.dtype) * self.d[rows].to(x.dtype)).view(-1, self.in_features)
            parts.append(F.linear(flat, weight))
        y = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    @property
    def weight_bytes(self) -> int:
        return self.q.numel() + self.d.numel() * 4

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, q8_0 groups of {GROUP}"
