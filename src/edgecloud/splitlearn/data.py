"""Offline data for split learning: scikit-learn's bundled handwritten digits.

``load_digits`` ships inside scikit-learn, so training runs with no network. Each UE owns an
equal, disjoint shard of the training set; round ``r`` of an epoch takes batch ``r`` of every
shard, which makes the data a UE sees a pure function of (seed, UE, round) — any process
(a UE, a rejoined UE, a centralised reference) can rebuild it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgecloud.splitlearn.models import DIGITS_SHAPE


@dataclass(frozen=True)
class Dataset:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class DigitsSplit:
    train: Dataset
    test: Dataset


def load_digits_split(
    seed: int, dtype: torch.dtype = torch.float32, test_fraction: float = 0.2
) -> DigitsSplit:
    """Digits, shuffled by ``seed``, split into train and test, standardised."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits  # scikit-learn is slow to import: only where data is loaded

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    x = torch.tensor(digits.images[order], dtype=torch.float64).reshape(-1, *DIGITS_SHAPE)
    y = torch.tensor(digits.target[order], dtype=torch.int64)
    n_test = int(len(y) * test_fraction)
    # Standardise with the training set's statistics: plain SGD on raw 0..16 pixels learns slowly.
    train_x = x[n_test:]
    x = ((x - train_x.mean()) / train_x.std()).to(dtype)
    return DigitsSplit(train=Dataset(x[n_test:], y[n_test:]), test=Dataset(x[:n_test], y[:n_test]))


def rounds_per_epoch(train_size: int, num_ues: int, batch_per_ue: int) -> int:
    """Rounds in one epoch: every UE contributes one batch of ``batch_per_ue`` per round."""
    if batch_per_ue < 1:
        raise ValueError(f"batch_per_ue must be >= 1, got {batch_per_ue}")
    rounds = (train_size // num_ues) // batch_per_ue
    if rounds < 1:
        raise ValueError(
            f"batch_per_ue={batch_per_ue} exceeds a UE's shard of {train_size // num_ues} samples"
        )
    return rounds


def ue_batch(train: Dataset, num_ues: int, ue: int, batch_per_ue: int, round_index: int) -> Dataset:
    """The batch that UE ``ue`` trains on in global round ``round_index``."""
    shard = len(train) // num_ues
    per_epoch = rounds_per_epoch(len(train), num_ues, batch_per_ue)
    start = ue * shard + (round_index % per_epoch) * batch_per_ue
    return Dataset(train.x[start : start + batch_per_ue], train.y[start : start + batch_per_ue])
