"""RMSNorm, computed in float32 whatever the activation dtype (as the reference models do).

In float32 it is torch's fused ``rms_norm`` (the same arithmetic in one call: bit-identical here,
and 1.4-1.7x faster at 1 and 64 rows on this project's AMD EPYC, where a decode step runs two
norms a layer)."""

from __future__ import annotations

import torch


class RMSNorm(torch.nn.Module):
    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return torch.nn.functional.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)
