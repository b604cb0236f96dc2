"""The models that split learning trains, as ``nn.Sequential`` stacks of cut-able blocks.

C2P2SL (arXiv 2511.23167, Sec. II) cuts a network between two layers: the UE runs the blocks
before the cut, the base station the blocks after it. Each model here is a sequence of blocks
whose boundaries are the admissible cut points, so ``split_model(model, cut)`` is a plain slice
and the latency model can profile each block on its own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from edgecloud.splitlearn.data import NUM_CLASSES, dataset_spec

DIGITS_CLASSES = NUM_CLASSES


def mlp() -> nn.Sequential:
    """A four-block MLP for 8x8 digits; cuts after 1, 2 or 3 blocks."""
    return nn.Sequential(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU()),
        nn.Sequential(nn.Linear(256, 128), nn.ReLU()),
        nn.Sequential(nn.Linear(128, 64), nn.ReLU()),
        nn.Sequential(nn.Linear(64, DIGITS_CLASSES)),
    )


def cnn() -> nn.Sequential:
    """A small CNN for 8x8 digits: three conv blocks then two dense blocks; cuts 1..4."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(128, 64), nn.ReLU()),
        nn.Sequential(nn.Linear(64, DIGITS_CLASSES)),
    )


def mnist_mlp() -> nn.Sequential:
    """A four-block MLP for 28x28 MNIST; cuts after 1, 2 or 3 blocks."""
    return nn.Sequential(
        nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU()),
        nn.Sequential(nn.Linear(128, 64), nn.ReLU()),
        nn.Sequential(nn.Linear(64, 32), nn.ReLU()),
        nn.Sequential(nn.Linear(32, DIGITS_CLASSES)),
    )


def mnist_cnn() -> nn.Sequential:
    """LeNet-style CNN for 28x28 MNIST: two conv blocks, two dense blocks; cuts 1..3.

    The cut-layer widths shrink 1152 -> 256 -> 64 while the UE side's work grows, the trade-off
    the optimiser weighs; the conv blocks have few parameters, so the epoch-end averaging of the
    UE side is cheap at any cut.
    """
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 8, 5), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(8, 16, 5), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU()),
        nn.Sequential(nn.Linear(64, DIGITS_CLASSES)),
    )


MODELS: dict[str, dict[str, Callable[[], nn.Sequential]]] = {
    "digits": {"mlp": mlp, "cnn": cnn},
    "mnist": {"mlp": mnist_mlp, "cnn": mnist_cnn},
}


def build_model(
    name: str, seed: int, dtype: torch.dtype = torch.float32, dataset: str = "digits"
) -> nn.Sequential:
    """The named model for ``dataset`` with deterministic initial weights (the same in every process)."""
    dataset_spec(dataset)
    if name not in MODELS[dataset]:
        raise ValueError(f"model must be one of {sorted(MODELS[dataset])}, got {name!r}")
    torch.manual_seed(seed)
    return MODELS[dataset][name]().to(dtype)


def valid_cuts(model: nn.Sequential) -> range:
    """Cut points that leave at least one block on each side."""
    return range(1, len(model))


def split_model(model: nn.Sequential, cut: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(UE part, BS part): blocks ``[0, cut)`` and ``[cut, n)``, sharing the parameters."""
    if cut not in valid_cuts(model):
        raise ValueError(f"cut must be in 1..{len(model) - 1}, got {cut}")
    return model[:cut], model[cut:]
