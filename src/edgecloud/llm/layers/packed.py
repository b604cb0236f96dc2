"""Dense linear layers with their weights packed once for oneDNN, for CPU inference.

torch's ``F.linear`` on a CPU calls MKL's sgemm, which repacks the weight into its blocked layout
on every call. oneDNN's matmul takes a weight reordered once into that layout
(``torch.ops.mkldnn._reorder_linear_weight``, what torch's own CPU inference compiler uses).
Measured on the project's AMD EPYC (2 threads, SmolLM2-135M shapes; docs/benchmarks.md): 1.2-1.4x
at 64 rows, about 2x at 8 rows, and the 49,152-wide LM head 1.8x at 64 rows; results agree with
``F.linear`` to float32 rounding (the sums run in another order).

``pack_linears`` swaps the model's ``torch.nn.Linear`` modules (the decoder's projections and the
LM head) for ``PackedLinear`` after the weights are loaded (and quantized) and before LoRA wraps
them. The plain weight is dropped where nothing else holds it (``PackedLinear.weight`` unpacks a
copy on demand, so ``quantize_model`` still works on a loaded engine); a tied LM head keeps the
embedding it shares.
``EDGECLOUD_ONEDNN_LINEAR=0`` keeps ``F.linear``.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)

# The row count oneDNN picks its weight layout for; any row count runs with it.
BATCH_HINT = 64


def available(dtype: torch.dtype, device: torch.device) -> bool:
    return (
        os.environ.get("EDGECLOUD_ONEDNN_LINEAR", "1") != "0"
        and device.type == "cpu"
        and dtype in (torch.float32, torch.bfloat16)
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
    )


class PackedLinear(torch.nn.Module):
    """``y = x W^T (+ b)`` through oneDNN with ``W`` in oneDNN's blocked layout (an opaque tensor)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), BATCH_HINT)
        self.bias = linear.bias

    @property
    def weight(self) -> torch.Tensor:
        """The plain ``[out, in]`` weight, unpacked on each read (for code that quantizes or inspects
        a loaded model; the forward pass never needs it)."""
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")
        return y.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linears(model: torch.nn.Module) -> int:
    """Replaces every ``torch.nn.Linear`` in ``model`` with a ``PackedLinear``; returns how many."""
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is torch.nn.Linear and child.weight.device.type == "cpu"
    ]
    for parent, name, child in swaps:
        setattr(parent, name, PackedLinear(child))
    log.debug("packed %d linear layers for oneDNN", len(swaps))
    return len(swaps)
