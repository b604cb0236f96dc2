"""Per-block cost profile of a model and a calibrated compute-speed model (C2P2SL Sec. III-A).

The latency model needs, for every block of the network, how much work its forward and backward
passes are and how many bytes leave it. Both come from the torch module itself:
``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of the real forward and backward
kernels, and the block's output shape gives the activation (and cut-layer gradient) size. Nothing
is tabulated by hand.

FLOPs alone do not predict time for small layers on a CPU: each block and each pass carries a
fixed dispatch cost. ``ComputeSpeed`` is therefore ``seconds = flops * s_per_flop + blocks *
s_per_block + s_per_call``, fitted per pass kind by non-negative least squares on CPU-time
measurements of the very segments the runtime executes. A device ``slowdown`` times slower than
this host (a UE) is modelled by multiplying, and emulated in the runtime the same way.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from edgecloud.splitlearn.models import split_model, valid_cuts
from edgecloud.splitlearn.sgd import MomentumSGD

T = TypeVar("T")


@dataclass(frozen=True)
class BlockProfile:
    """Per-sample cost of one block."""

    forward_flops: float
    backward_flops: float  # with the gradient of the block's input (all blocks but the first)
    backward_flops_no_input_grad: float  # the first block: inputs are data and need no gradient
    output_elements: int  # activation elements per sample leaving the block
    parameter_elements: int
    parameter_tensors: int


@dataclass(frozen=True)
class ModelProfile:
    blocks: tuple[BlockProfile, ...]
    input_elements: int
    element_bytes: int

    @property
    def cuts(self) -> range:
        return range(1, len(self.blocks))

    def forward_flops(self, start: int, stop: int, batch: float) -> float:
        return batch * sum(b.forward_flops for b in self.blocks[start:stop])

    def backward_flops(self, start: int, stop: int, batch: float) -> float:
        flops = sum(b.backward_flops for b in self.blocks[start:stop])
        if start == 0 and stop > 0:
            first = self.blocks[0]
            flops += first.backward_flops_no_input_grad - first.backward_flops
        return batch * flops


def _count_flops(fn: Callable[[], object]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def profile_model(model: nn.Sequential, input_shape: tuple[int, ...]) -> ModelProfile:
    """Count each block's FLOPs and output size by running it on one sample."""
    dtype = next(model.parameters()).dtype
    x = torch.zeros(1, *input_shape, dtype=dtype)
    blocks = []
    for block in model:
        out = block(x)
        forward = _count_flops(lambda block=block, x=x: block(x))
        backward = {}
        for needs_input_grad in (True, False):
            inp = x.detach().clone().requires_grad_(needs_input_grad)
            y = block(inp)
            grad = torch.ones_like(y)
            backward[needs_input_grad] = _count_flops(lambda y=y, grad=grad: y.backward(grad))
            block.zero_grad(set_to_none=True)
        params = list(block.parameters())
        blocks.append(
            BlockProfile(
                forward_flops=forward,
                backward_flops=backward[True],
                backward_flops_no_input_grad=backward[False],
                output_elements=out[0].numel(),
                parameter_elements=sum(p.numel() for p in params),
                parameter_tensors=len(params),
            )
        )
        x = out.detach()
    return ModelProfile(
        blocks=tuple(blocks),
        input_elements=int(np.prod(input_shape)),
        element_bytes=torch.tensor([], dtype=dtype).element_size(),
    )


@dataclass(frozen=True)
class PassCost:
    """Host CPU seconds of one pass: ``flops * s_per_flop + blocks * s_per_block + s_per_call``."""

    s_per_flop: float
    s_per_block: float
    s_per_call: float

    def seconds(self, flops: float, blocks: int) -> float:
        return flops * self.s_per_flop + blocks * self.s_per_block + self.s_per_call


@dataclass(frozen=True)
class ComputeSpeed:
    """Calibrated host speed for the three kinds of work in a split-learning round.

    ``ue_forward``/``ue_backward``: the UE's blocks on one micro-batch; ``bs_step``: the BS's
    forward, loss and backward on one micro-batch; ``optimizer``: one SGD step, its "flops" are
    parameter elements and its "blocks" parameter tensors.
    """

    ue_forward: PassCost
    ue_backward: PassCost
    bs_step: PassCost
    optimizer: PassCost

    def scaled(self, factor: float) -> ComputeSpeed:
        """The same device doing everything ``factor`` times slower (or faster)."""

        def scale(cost: PassCost) -> PassCost:
            return PassCost(cost.s_per_flop * factor, cost.s_per_block * factor, cost.s_per_call * factor)

        return ComputeSpeed(
            *(scale(c) for c in (self.ue_forward, self.ue_backward, self.bs_step, self.optimizer))
        )

    def ue_forward_s(self, profile: ModelProfile, cut: int, batch: float) -> float:
        return self.ue_forward.seconds(profile.forward_flops(0, cut, batch), cut)

    def ue_backward_s(self, profile: ModelProfile, cut: int, batch: float) -> float:
        return self.ue_backward.seconds(profile.backward_flops(0, cut, batch), cut)

    def bs_s(self, profile: ModelProfile, cut: int, batch: float) -> float:
        n = len(profile.blocks)
        flops = profile.forward_flops(cut, n, batch) + profile.backward_flops(cut, n, batch)
        return self.bs_step.seconds(flops, n - cut)

    def optimizer_s(self, profile: ModelProfile, start: int, stop: int) -> float:
        blocks = profile.blocks[start:stop]
        return self.optimizer.seconds(
            sum(b.parameter_elements for b in blocks), sum(b.parameter_tensors for b in blocks)
        )


IDLE_BETWEEN_SAMPLES_S = 0.005


def _cpu_seconds(prepare: Callable[[], T], timed: Callable[[T], object], repeats: int) -> float:
    """Median thread CPU time of ``timed(prepare())``, timing only ``timed``.

    CPU time rather than wall time: robust to other processes sharing the cores, and what the
    runtime's slowdown emulation multiplies. Each sample follows a short idle period, because in
    training every computation follows a wait for the network: caches are cold and the same
    kernel costs ~1.6x its back-to-back time on this machine.
    """
    samples = []
    for _ in range(repeats):
        state = prepare()
        time.sleep(IDLE_BETWEEN_SAMPLES_S)
        start = time.thread_time()
        timed(state)
        samples.append(time.thread_time() - start)
    return statistics.median(samples)


def _fit(rows: list[tuple[float, float, float]]) -> PassCost:
    """Non-negative least squares of (flops, blocks) -> seconds, relative error weighted."""
    a = np.array([[f, b, 1.0] for f, b, _ in rows])
    t = np.array([s for _, _, s in rows])
    weights = 1.0 / np.maximum(t, 1e-9)
    coef, _ = nnls(a * weights[:, None], t * weights)
    return PassCost(s_per_flop=float(coef[0]), s_per_block=float(coef[1]), s_per_call=float(coef[2]))


def calibrate(
    model: nn.Sequential,
    profile: ModelProfile,
    input_shape: tuple[int, ...],
    batches: tuple[int, ...] = (4, 16, 64),
    repeats: int = 15,
) -> ComputeSpeed:
    """Measure the real segments on this host (1 torch thread) and fit ``ComputeSpeed``."""
    dtype = next(model.parameters()).dtype
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    fwd, bwd, bs, opt = [], [], [], []
    n = len(model)
    for cut in valid_cuts(model):
        ue, server = split_model(model, cut)
        for batch in batches:
            x = torch.randn(batch, *input_shape, dtype=dtype)
            labels = torch.randint(0, 10, (batch,))

            # Exactly what the runtime does inside each emulated computation (see runtime.py).
            def ue_forward(
                _: None, ue: nn.Module = ue, x: torch.Tensor = x, labels: torch.Tensor = labels
            ) -> None:
                out = ue(x)
                torch.cat([out.detach().reshape(len(x), -1), labels.to(out.dtype).unsqueeze(1)], dim=1)

            def ue_graph(ue: nn.Module = ue, x: torch.Tensor = x) -> torch.Tensor:
                return ue(x)

            def ue_backward(out: torch.Tensor) -> None:
                out.backward(torch.ones_like(out))

            def cut_activation(ue: nn.Module = ue, x: torch.Tensor = x) -> torch.Tensor:
                with torch.no_grad():
                    return ue(x)

            def bs_step(act: torch.Tensor, server: nn.Module = server, labels: torch.Tensor = labels) -> None:
                act.requires_grad_(True)
                (loss_fn(server(act), labels) / len(labels)).backward()
                assert act.grad is not None
                act.grad.reshape(-1)

            fwd.append(
                (profile.forward_flops(0, cut, batch), cut, _cpu_seconds(lambda: None, ue_forward, repeats))
            )
            bwd.append(
                (profile.backward_flops(0, cut, batch), cut, _cpu_seconds(ue_graph, ue_backward, repeats))
            )
            bs_flops = profile.forward_flops(cut, n, batch) + profile.backward_flops(cut, n, batch)
            bs.append((bs_flops, n - cut, _cpu_seconds(cut_activation, bs_step, repeats)))
        model.zero_grad(set_to_none=True)
        for part, start, stop in ((ue, 0, cut), (server, cut, n)):
            sgd = MomentumSGD(part.parameters(), lr=0.0, momentum=0.9)

            def with_gradients(part: nn.Module = part) -> None:
                for p in part.parameters():
                    p.grad = torch.zeros_like(p)

            def step(_: None, sgd: MomentumSGD = sgd) -> None:
                sgd.step()
                sgd.zero_grad()

            blocks = profile.blocks[start:stop]
            elements = sum(b.parameter_elements for b in blocks)
            tensors = sum(b.parameter_tensors for b in blocks)
            opt.append((elements, tensors, _cpu_seconds(with_gradients, step, repeats)))
        model.zero_grad(set_to_none=True)
    return ComputeSpeed(ue_forward=_fit(fwd), ue_backward=_fit(bwd), bs_step=_fit(bs), optimizer=_fit(opt))
