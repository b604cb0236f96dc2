"""The segmented LoRA matmul as Triton kernels for CUDA (Punica's SGMV, arXiv 2310.18547, §4).

Two launches per fused module, as Punica's shrink and expand:

* ``shrink``: program ``(segment, row block, slice × rank block)`` multiplies its rows of ``x`` by
  the slot's ``A`` of one slice, ``BLOCK_K`` input features at a time, into a float32 buffer
  ``xa[slice, row, rank]``. A program whose rank block lies past its adapter's rank returns at
  once, so a rank-8 segment launches the same grid as a rank-128 one but does 1/16 of the work.
* ``expand`` (one launch per slice of the fused output): program ``(segment, row block, out
  block)`` multiplies ``xa`` by the slot's ``B`` up to the adapter's rank and adds ``scale ×``
  the product into its block of the base output, read and written once (each output element
  belongs to one program: no atomics).

Segments, slots, ranks and scales are read from device tensors, so one launch serves every
adapter of the step, whatever their ranks. ``pad_to > 0`` makes every segment run to that rank
(the rank-oblivious batch the skew measurement compares against).

Importing this module imports Triton, so only the CUDA path imports it (``layers.LoRALinear``);
the test runs it in Triton's interpreter (``TRITON_INTERPRET=1``), which executes the same
kernels on CPU tensors.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from edgecloud.llm.lora.batch import LoRABatch
from edgecloud.llm.lora.slots import ModuleSlots

BLOCK_M = 16
BLOCK_R = 16
BLOCK_K = 32
BLOCK_N = 64


@triton.jit
def _shrink_kernel(
    x_ptr, a_ptr, xa_ptr, seg_slot_ptr, seg_start_ptr, seg_len_ptr, rank_ptr, pad_to, in_features, rank_blocks,
    stride_xm, stride_as, stride_ai, stride_ar, stride_xai, stride_xam,
    BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    seg = tl.program_id(0)
    pid_m = tl.program_id(1)
    slice_idx = tl.program_id(2) // rank_blocks
    rank_block = tl.program_id(2) % rank_blocks
    slot = tl.load(seg_slot_ptr + seg)
    start = tl.load(seg_start_ptr + seg)
    length = tl.load(seg_len_ptr + seg)
    rank = tl.load(rank_ptr + slot)
    if pad_to > 0:
        rank = pad_to
    if pid_m * BLOCK_M >= length or rank_block * BLOCK_R >= rank:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_r = rank_block * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = offs_m < length
    rank_ok = offs_r < rank
    x_rows = x_ptr + (start + offs_m)[:, None] * stride_xm
    a_rows = a_ptr + slot * stride_as + slice_idx * stride_ai + offs_r[:, None] * stride_ar
    acc = tl.zeros((BLOCK_M, BLOCK_R), dtype=tl.float32)
    for k0 in range(0, in_features, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < in_features
        xt = tl.load(x_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        at = tl.load(a_rows + k[None, :], mask=rank_ok[:, None] & k_ok[None, :], other=0.0)
        acc += tl.dot(xt, tl.trans(at), input_precision=PRECISION)
    out = xa_ptr + slice_idx * stride_xai + (start + offs_m)[:, None] * stride_xam + offs_r[None, :]
    tl.store(out, acc, mask=row_ok[:, None] & rank_ok[None, :])


@triton.jit
def _expand_kernel(
    xa_ptr, b_ptr, y_ptr, seg_slot_ptr, seg_start_ptr, seg_len_ptr, rank_ptr, scale_ptr, pad_to, slice_idx,
    num_slices, out_offset, out_len,
    stride_xai, stride_xam, stride_bs, stride_bo, stride_ym,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr,
):
    seg = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    slot = tl.load(seg_slot_ptr + seg)
    start = tl.load(seg_start_ptr + seg)
    length = tl.load(seg_len_ptr + seg)
    scale = tl.load(scale_ptr + slot * num_slices + slice_idx)
    rank = tl.load(rank_ptr + slot)
    if pad_to > 0:
        rank = pad_to
    if pid_m * BLOCK_M >= length or scale == 0.0:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    row_ok = offs_m < length
    col_ok = offs_n < out_len
    xa_rows = xa_ptr + slice_idx * stride_xai + (start + offs_m)[:, None] * stride_xam
    b_cols = b_ptr + slot * stride_bs + (out_offset + offs_n)[None, :] * stride_bo
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, rank, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < rank
        xt = tl.load(xa_rows + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        bt = tl.load(b_cols + k[:, None], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc += tl.dot(xt, bt.to(tl.float32), input_precision=PRECISION)
    y_block = y_ptr + (start + offs_m)[:, None] * stride_ym + (out_offset + offs_n)[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    y = tl.load(y_block, mask=mask, other=0.0)
    tl.store(y_block, (y.to(tl.float32) + acc * scale).to(y.dtype), mask=mask)


def sgmv_triton(y: torch.Tensor, x: torch.Tensor, module: ModuleSlots, batch: LoRABatch, pad_to: int = 0) -> None:
    """``y[rows] += scale · B (A x[rows])`` for every segment, in place (``ops.sgmv``'s contract)."""
    if not batch.slots:
        return
    assert x.stride(-1) == 1 and y.stride(-1) == 1 and module.a.stride(-1) == 1
    slots, starts, lengths = batch.on(x.device)
    num_slices = len(module.slices)
    max_rank = module.a.shape[2]
    rank_blocks = triton.cdiv(max_rank, BLOCK_R)
    rows = triton.cdiv(batch.max_segment_rows, BLOCK_M)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    xa = torch.empty(num_slices, x.shape[0], max_rank, dtype=torch.float32, device=x.device)
    _shrink_kernel[(len(batch.slots), rows, num_slices * rank_blocks)](
        x, module.a, xa, slots, starts, lengths, module.rank_t, pad_to, x.shape[1], rank_blocks,
        x.stride(0), module.a.stride(0), module.a.stride(1), module.a.stride(2), xa.stride(0), xa.stride(1),
        BLOCK_M=BLOCK_M, BLOCK_R=BLOCK_R, BLOCK_K=BLOCK_K, PRECISION=precision,
    )
    for index, (offset, length) in enumerate(module.slices):
        _expand_kernel[(len(batch.slots), rows, triton.cdiv(length, BLOCK_N))](
            xa, module.b, y, slots, starts, lengths, module.rank_t, module.scale_t, pad_to, index, num_slices,
            offset, length, xa.stride(0), xa.stride(1), module.b.stride(0), module.b.stride(1), y.stride(0),
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, PRECISION=precision,
        )
