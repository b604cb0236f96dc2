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

# Input of the scikit-learn digits data set: 8x8 grey images, 10 classes.
DIGITS_SHAPE: tuple[int, ...] = (1, 8, 8)
DIGITS_CLASSES = 10


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


MODELS: dict[str, Callable[[], nn.Sequential]] = {"mlp": mlp, "cnn": cnn}


def build_model(name: str, seed: int, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """The named model with deterministic initial weights (the same in every process)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    torch.manual_seed(seed)
    return MODELS[name]().to(dtype)


def valid_cuts(model: nn.Sequential) -> range:
    """Cut points that leave at least one block on each side."""
    return range(1, len(model))


def split_model(model: nn.Sequential, cut: int) -> tuple[nn.Sequential, nn.Sequential]:
    """(UE part, BS part): blocks ``[0, cut)`` and ``[cut, n)``, sharing the parameters."""
    if cut not in valid_cuts(model):
        raise ValueError(f"cut must be in 1..{len(model) - 1}, got {cut}")
    return model[:cut], model[cut:]
