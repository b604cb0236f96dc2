"""SGD with momentum for the split-learning processes, on torch's own functional kernel.

``torch.optim.SGD`` is the same update, but constructing any ``torch.optim.Optimizer`` imports
``torch._dynamo`` on first use, which costs over three CPU-seconds in every UE and BS process —
more than a whole training round here. ``torch.optim.sgd.sgd`` is the kernel that class calls.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.optim.sgd import sgd


class MomentumSGD:
    def __init__(self, parameters: Iterable[torch.nn.Parameter], lr: float, momentum: float) -> None:
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.parameters = list(parameters)
        self.lr = lr
        self.momentum = momentum
        self.buffers: list[torch.Tensor | None] = [None] * len(self.parameters)

    @torch.no_grad()
    def step(self) -> None:
        with_grad = [i for i, p in enumerate(self.parameters) if p.grad is not None]
        buffers = [self.buffers[i] for i in with_grad]
        sgd(
            [self.parameters[i] for i in with_grad],
            [self.parameters[i].grad for i in with_grad],
            buffers,
            weight_decay=0.0,
            momentum=self.momentum,
            lr=self.lr,
            dampening=0.0,
            nesterov=False,
            maximize=False,
        )
        for i, buffer in zip(with_grad, buffers, strict=True):
            self.buffers[i] = buffer

    def zero_grad(self) -> None:
        for p in self.parameters:
            p.grad = None
