"""Group-wise quantized weights in GGUF's block formats: Q8_0 (int8) and Q4_1 (int4).

Both split each weight row into groups of 32 consecutive input features. Q8_0 stores per group an
fp16 scale ``d`` and 32 signed bytes: ``w = d * q``. Q4_1 stores per group an fp16 scale ``d``, an
fp16 minimum ``m`` and 32 four-bit codes: ``w = d * q + m`` with ``q`` in 0..15 (8.5 and 5 bits a
weight). ``from_gguf_*`` read llama.cpp's block bytes as they are (no detour through floats);
``quantize_*`` are llama.cpp's reference round-to-nearest quantizers, for checkpoints that come
as floats or in another block format.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

GROUP = 32
Q8_0_BLOCK_BYTES = 2 + GROUP  # d, 32 x int8
Q4_1_BLOCK_BYTES = 2 + 2 + GROUP // 2  # d, m, 16 bytes of nibbles


@dataclass
class Int8Groups:
    """Q8_0: ``w[n, k] = d[n, k // 32] * q[n, k]``."""

    q: torch.Tensor  # int8 [N, K]
    d: torch.Tensor  # float16 [N, K / 32]

    def dequantize(self) -> torch.Tensor:
        n, k = self.q.shape
        return (self.q.float().view(n, k // GROUP, GROUP) * self.d.float()[..., None]).view(n, k)

    @property
    def bits_per_weight(self) -> float:
        return 8 * Q8_0_BLOCK_BYTES / GROUP


@dataclass
class Int4Groups:
    """Q4_1: ``w[n, k] = d[n, k // 32] * q[n, k] + m[n, k // 32]``, ``q`` in 0..15."""

    q: torch.Tensor  # uint8 [N, K], values 0..15
    d: torch.Tensor  # float16 [N, K / 32]
    m: torch.Tensor  # float16 [N, K / 32]

    def dequantize(self) -> torch.Tensor:
        n, k = self.q.shape
        grouped = self.q.float().view(n, k // GROUP, GROUP) * self.d.float()[..., None] + self.m.float()[..., None]
        return grouped.view(n, k)

    @property
    def bits_per_weight(self) -> float:
        return 8 * Q4_1_BLOCK_BYTES / GROUP


def _blocks(raw: np.ndarray, block_bytes: int) -> tuple[np.ndarray, int, int]:
    rows, row_bytes = raw.shape
    if row_bytes % block_bytes:
        raise ValueError(f"a row of {row_bytes} bytes is not a whole number of {block_bytes}-byte blocks")
    groups = row_bytes // block_bytes
    return np.ascontiguousarray(raw, dtype=np.uint8).reshape(rows, groups, block_bytes), rows, groups


def from_gguf_q8_0(raw: np.ndarray) -> Int8Groups:
    """``raw``: a GGUF Q8_0 tensor's bytes, ``[rows, row_bytes]`` uint8 (``GGUFReader`` tensor data)."""
    blocks, rows, groups = _blocks(raw, Q8_0_BLOCK_BYTES)
    d = blocks[..., :2].copy().view(np.float16).reshape(rows, groups)
    q = blocks[..., 2:].copy().view(np.int8).reshape(rows, groups * GROUP)
    return Int8Groups(torch.from_numpy(q), torch.from_numpy(d))


def from_gguf_q4_1(raw: np.ndarray) -> Int4Groups:
    """``raw``: a GGUF Q4_1 tensor's bytes. In a block, byte ``j`` holds element ``j`` in its low
    nibble and element ``j + 16`` in its high nibble."""
    blocks, rows, groups = _blocks(raw, Q4_1_BLOCK_BYTES)
    d = blocks[..., 0:2].copy().view(np.float16).reshape(rows, groups)
    m = blocks[..., 2:4].copy().view(np.float16).reshape(rows, groups)
    packed = blocks[..., 4:]
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=-1).reshape(rows, groups * GROUP)
    return Int4Groups(torch.from_numpy(q), torch.from_numpy(d), torch.from_numpy(m))


def _grouped(weight: torch.Tensor) -> torch.Tensor:
    n, k = weight.shape
    if k % GROUP:
        raise ValueError(f"input features ({k}) must be a multiple of {GROUP} to quantize in groups of {GROUP}")
    return weight.detach().float().reshape(n, k // GROUP, GROUP)


def quantize_int8(weight: torch.Tensor) -> Int8Groups:
    """llama.cpp's ``quantize_row_q8_0_ref``: ``d = max|w| / 127``, ``q = round(w / d)``."""
    w = _grouped(weight)
    d = w.abs().amax(-1) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = torch.round(w * inv[..., None]).clamp(-127, 127).to(torch.int8)
    return Int8Groups(q.reshape(weight.shape), d.to(torch.float16))


def quantize_int4(weight: torch.Tensor) -> Int4Groups:
    """llama.cpp's ``quantize_row_q4_1_ref``: ``m = min w``, ``d = (max w - m) / 15``,
    ``q = round((w - m) / d)``."""
    w = _grouped(weight)
    low, high = w.amin(-1), w.amax(-1)
    d = (high - low) / 15
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = torch.round((w - low[..., None]) * inv[..., None]).clamp(0, 15).to(torch.uint8)
    return Int4Groups(q.reshape(weight.shape), d.to(torch.float16), low.to(torch.float16))


def concat_rows(parts: list[Int8Groups] | list[Int4Groups]) -> Int8Groups | Int4Groups:
    """Stacks the rows of several weights of one format (fused q/k/v or gate/up projections)."""
    first = parts[0]
    if isinstance(first, Int4Groups):
        return Int4Groups(*(torch.cat([getattr(p, f) for p in parts]) for f in ("q", "d", "m")))
    return Int8Groups(*(torch.cat([getattr(p, f) for p in parts]) for f in ("q", "d")))
