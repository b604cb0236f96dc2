"""The LoRA SGMV Triton kernels, run in Triton's interpreter on the CPU: equal to the torch path.

Skipped where Triton is not installed (it is a ``dev`` dependency on Linux x86-64 only, and the
``gpu`` extra), or where TRITON_INTERPRET is not 1 (tests/conftest.py sets it for the whole session,
before any test module is imported, unless the caller chose otherwise).
The interpreter executes the same kernels with numpy semantics, so this checks their indexing
(segments, slots, slices of a fused output, ranks below the slot's maximum, masks), not GPU speed.
"""

from __future__ import annotations

import os

import pytest
import torch

# Read when Triton builds a kernel, its own library's included, which may happen before this module
# is imported; so tests/conftest.py sets it for the session (setting it here would be too late, and
# would override a caller's TRITON_INTERPRET=0 for every later test).
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("TRITON_INTERPRET is not 1 (tests/conftest.py sets it unless told otherwise): "
                "the kernel test runs in Triton's interpreter", allow_module_level=True)
pytest.importorskip("triton", reason="Triton is not installed (pip install 'edgecloud[gpu]'); "
                                     "the kernel test runs in Triton's CPU interpreter")

from edgecloud.llm.lora.batch import LoRABatch
from edgecloud.llm.lora.ops import sgmv
from edgecloud.llm.lora.slots import ModuleSlots
from edgecloud.llm.lora.triton_ops import sgmv_triton


def filled_module(slices: list[tuple[int, int]], in_features: int, ranks: list[int], max_rank: int,
                  scales: list[list[float]], dtype: torch.dtype) -> ModuleSlots:
    gen = torch.Generator().manual_seed(0)
    module = ModuleSlots(in_features, slices, len(ranks), max_rank, dtype, torch.device("cpu"))
    for slot, rank in enumerate(ranks):
        module.a[slot, :, :rank] = torch.randn(len(slices), rank, in_features, generator=gen).to(dtype)
        module.b[slot, :, :rank] = torch.randn(module.b.shape[1], rank, generator=gen).to(dtype)
        module.rank[slot] = rank
        module.rank_t[slot] = rank
        module.scale[slot] = scales[slot]
        module.scale_t[slot] = torch.tensor(scales[slot])
    return module


@pytest.mark.parametrize("pad", [False, True])
def test_mixed_ranks_and_slices_match_torch(pad: bool) -> None:
    # a fused q/k/v-like output of three slices; five slots of ranks 8..64; one slot skips slice k
    slices = [(0, 96), (96, 32), (128, 32)]
    ranks = [8, 16, 64, 4, 32]
    scales = [[2.0, 2.0, 2.0], [0.5, 0.0, 0.5], [1.0, 1.0, 1.0], [4.0, 4.0, 4.0], [0.25, 0.25, 0.0]]
    module = filled_module(slices, 80, ranks, 64, scales, torch.float32)
    # segments of 1 to 37 rows, rows without an adapter between them, one slot twice
    row_slots = [2] * 37 + [-1] * 3 + [0] * 5 + [4] + [1] * 17 + [-1] + [3] * 2 + [2]
    batch = LoRABatch.from_rows(row_slots)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(len(row_slots), 80, generator=gen)
    base = torch.randn(len(row_slots), 160, generator=gen)
    pad_to = max(ranks) if pad else 0
    want, got = base.clone(), base.clone()
    sgmv(want, x, module, batch, pad_to)
    sgmv_triton(got, x, module, batch, pad_to)
    assert not torch.equal(want, base)
    torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)
    untouched = [i for i, s in enumerate(row_slots) if s < 0]
    assert torch.equal(got[untouched], base[untouched])


def test_half_precision_pools() -> None:
    # half activations and pools, float32 accumulation (the interpreter has no bfloat16: numpy lacks it)
    module = filled_module([(0, 64)], 48, [16, 8], 16, [[0.5], [1.0]], torch.float16)
    as_float = filled_module([(0, 64)], 48, [16, 8], 16, [[0.5], [1.0]], torch.float32)
    as_float.a.copy_(module.a.float())
    as_float.b.copy_(module.b.float())
    batch = LoRABatch.from_rows([1] * 3 + [0] * 20)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(23, 48, generator=gen).to(torch.float16)
    base = torch.randn(23, 64, generator=gen).to(torch.float16)
    want, got = base.float(), base.clone()
    sgmv(want, x.float(), as_float, batch)
    sgmv_triton(got, x, module, batch)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), want, atol=0.25, rtol=2e-2)
