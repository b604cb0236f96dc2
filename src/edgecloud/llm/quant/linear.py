"""Weight-only quantized linear layers (``make_linear``'s stand-ins for the dense ``nn.Linear``).

``Int4Linear`` keeps Q4_1 groups as llama.cpp stores them (16 bytes of 4-bit codes and an fp16
scale and minimum per 32 weights: 5 bits a weight) and has two kernels:

- up to ``C_KERNEL_MAX_ROWS`` activation rows (decode of a few streams), ``csrc/q4_1_matmul.c``, built on
  this machine (``attention/cpu_kernels.py``). It reads the weights once at 5 bits and unpacks them
  in registers. With AVX-512 VNNI it rounds each group of 32 activations to int8 with its own scale
  (``max|x| / 127``, as llama.cpp does) and multiplies in integers; without VNNI the layer keeps
  torch's kernel (``layer_kernel``). At one row it is 2-3x torch's int4 kernel with the
  weights in cache and ~1.3x from memory on this project's AMD EPYC;
- more rows (batched decode, prefill), ``aten._weight_int4pack_mm_for_cpu`` on torch's CPU int4
  layout, built from the groups at its first use (kept beside the blocks from then on: once a
  layer has seen more than four rows it holds its weights twice, ~10 bits a weight in memory;
  ``weight_bytes`` counts what a one-row step reads). It is vectorized (AVX-512) for bfloat16
  activations only (its fp32 path is a scalar loop, 40x slower here), so activations are rounded to
  bf16 for the product, and the group scale ``d`` and offset ``m + 8d`` are held in bf16 (the kernel
  computes ``(q - 8) * scale + zero``); from 8 rows up its bf16 dot products are as fast as the C
  kernel's integer ones here, and it is torch's own.

Either way the model differs from its dequantized fp32 twin by the activations' rounding (and the
bf16 scales), which the perplexity report measures. Without a C compiler (or with
``EDGECLOUD_CPU_KERNELS=0``) every product takes torch's kernel.

``Int8Linear`` keeps Q8_0 groups (int8 codes and their fp16 scales) and expands one slice of rows
at a time into the activation dtype right before the product, so the expanded slice stays in
cache and the weights are read from memory at one byte each. In fp32 the expansion is exact
(``d * q`` fits fp32's mantissa): an int8 model computes what the dense model with the Q8_0
weights dequantized computes, up to summation order.
"""

from __future__ import annotations

import ctypes
from functools import cache

import torch
import torch.nn.functional as F

from edgecloud.llm.attention import cpu_kernels
from edgecloud.llm.quant.groups import GROUP, Int4Groups, Int8Groups

# Rows expanded at once by Int8Linear: 1024 rows x 1536 inputs x 4 bytes = 6 MiB, within L2 + L3 share.
_INT8_ROWS_PER_SLICE = 1024

# Activation rows up to which Int4Linear multiplies with the C kernel: at 1-4 rows it takes 0.6-0.8x
# the time of torch's kernel on this project's EPYC (SmolLM2 shapes, 2 threads), at 8-64 about the same.
C_KERNEL_MAX_ROWS = 4
_Q4_1_ARGTYPES = (
    ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,  # x, codes, scales, y
    ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,  # rows, outputs, inputs, threads
)


def q4_1_kernel() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    return cpu_kernels.compiled("edgecloud.llm.quant", "q4_1_matmul.c", "edgecloud_q4_1_matmul_f32",
                                _Q4_1_ARGTYPES, "the int4 (Q4_1) matmul")


@cache
def layer_kernel() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """The kernel ``Int4Linear`` uses for one or two rows: only its int8 (VNNI) build. Its float32
    build (AVX2-only CPUs) unpacks codes one by one and measured ~7x slower than torch's kernel here
    when built for AVX2, so there torch's kernel keeps every product; the float32 build stays
    callable (and tested) for a caller that wants exact float32 activations."""
    return q4_1_kernel() if activation_bits() == 8 else None


def activation_bits() -> int | None:
    """How the C kernel multiplies: 8 (activations rounded to int8 per group of 32) or 32 (float32);
    None without the kernel."""
    function = cpu_kernels.compiled("edgecloud.llm.quant", "q4_1_matmul.c", "edgecloud_q4_1_activation_bits",
                                    (), "the int4 (Q4_1) matmul")
    return None if function is None else int(function())


class Int4Linear(torch.nn.Module):
    def __init__(self, weight: Int4Groups, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        n, k = weight.q.shape
        self.in_features, self.out_features = k, n
        q = weight.q.view(n, k // GROUP, 2, GROUP // 2)  # GGUF's order: byte j = element j | element j + 16
        self.register_buffer("codes", (q[:, :, 0] | (q[:, :, 1] << 4)).contiguous())  # uint8 [N, K / 32, 16]
        self.register_buffer("scales", torch.stack([weight.d, weight.m], dim=1).contiguous())  # fp16 [N, 2, K / 32]
        self.register_buffer("bias", None if bias is None else bias.detach().clone())
        self._torch_layout: tuple[torch.Tensor, torch.Tensor] | None = None

    def _torch_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """torch's int4 layout and its bf16 ``[K / 32, N, 2]`` scales and zeros, made at first use."""
        if self._torch_layout is None:
            n, groups = self.out_features, self.in_features // GROUP
            codes = torch.stack([self.codes & 0x0F, self.codes >> 4], dim=2).view(n, self.in_features)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
            scale = self.scales[:, 0].float()
            zero = self.scales[:, 1].float() + 8 * scale
            scales_and_zeros = torch.stack([scale.t(), zero.t()], dim=-1).to(torch.bfloat16).contiguous()
            assert scales_and_zeros.shape == (groups, n, 2)
            self._torch_layout = (packed, scales_and_zeros)
        return self._torch_layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        kernel = layer_kernel() if rows <= C_KERNEL_MAX_ROWS and x.device.type == "cpu" else None
        if kernel is not None:  # one-stream decode: every microsecond of Python here is ~1% of a step
            flat = x if x.dtype == torch.float32 and x.is_contiguous() else x.to(torch.float32).contiguous()
            y = torch.empty(*x.shape[:-1], self.out_features, dtype=torch.float32)  # what the kernel writes
            status = kernel(flat.data_ptr(), self.codes.data_ptr(), self.scales.data_ptr(), y.data_ptr(), rows,
                            self.out_features, self.in_features, torch.get_num_threads())
            if status != 0:
                raise MemoryError("the int4 matmul kernel could not allocate its scratch buffers")
            if x.dtype != torch.float32:
                y = y.to(x.dtype)
        else:
            packed, scales_and_zeros = self._torch_weights()
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, packed, GROUP, scales_and_zeros)
            y = y.to(x.dtype).view(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    @property
    def weight_bytes(self) -> int:
        return self.codes.numel() + self.scales.numel() * 2

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

