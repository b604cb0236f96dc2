"""The segmented LoRA matmul on CPU (Punica's SGMV, arXiv 2310.18547, §4, in torch).

For each segment (rows of one adapter) and each fused module: ``shrink`` — the rows times the
slot's ``A`` of every slice at once, up to the adapter's own rank — then ``expand`` — each
targeted slice's part times its ``B``, scaled and added into that slice's columns of the base
layer's output. The work of a segment follows its own adapter's rank, so a batch that mixes
ranks costs the sum of its segments, not the number of segments times the largest rank.

``pad_rank=True`` runs the same products up to the step's largest rank in every segment: what a
rank-oblivious batched kernel (BGMV over slots padded to one rank) does. It computes the same
result (the slots are zero past each adapter's rank) and exists to measure the rank skew.

The order of operations is PEFT's (``lora_B(lora_A(x)) * scaling``, added to the base output), so
a float32 engine reproduces PEFT's tokens.
"""

from __future__ import annotations

import torch

from edgecloud.llm.lora.batch import LoRABatch
from edgecloud.llm.lora.slots import ModuleSlots


def sgmv(y: torch.Tensor, x: torch.Tensor, module: ModuleSlots, batch: LoRABatch, pad_to: int = 0) -> None:
    """``y[rows] += scale · B (A x[rows])`` for every segment, in place. ``pad_to > 0``: every
    segment computes up to that rank instead of its adapter's."""
    for slot, start, end in zip(batch.slots, batch.starts, batch.ends, strict=True):
        rank = pad_to or module.rank[slot]
        if rank == 0:
            continue  # the adapter does not touch this module
        xs = x[start:end]
        xa = torch.matmul(xs, module.a[slot, :, :rank].transpose(-1, -2))  # [slices, rows, rank]
        for index, ((offset, length), scale) in enumerate(zip(module.slices, module.scale[slot], strict=True)):
            if scale == 0.0:
                continue
            b = module.b[slot, offset : offset + length, :rank]
            y[start:end, offset : offset + length] += (xa[index] @ b.T) * scale
