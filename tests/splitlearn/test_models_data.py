import gzip
import io
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.splitlearn.data import (
    DIGITS_SHAPE,
    MNIST_SHAPE,
    Dataset,
    DataSplit,
    _ArrayUnpickler,
    load_digits_split,
    load_split,
    mnist_file,
    rounds_per_epoch,
    shard_batch,
    ue_batch,
    ue_shard,
)
from edgecloud.splitlearn.models import build_model, split_model, valid_cuts

# MNIST's published test-set class counts (digits 0..9).
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist() -> DataSplit:
    return load_split("mnist", seed=0)


@pytest.mark.parametrize(
    ("dataset", "name"), [("digits", "mlp"), ("digits", "cnn"), ("mnist", "mlp"), ("mnist", "cnn")]
)
def test_split_parts_compose_to_the_whole_model(dataset: str, name: str) -> None:
    model = build_model(name, seed=0, dataset=dataset)
    x = torch.randn(5, *(MNIST_SHAPE if dataset == "mnist" else DIGITS_SHAPE))
    for cut in valid_cuts(model):
        ue, bs = split_model(model, cut)
        assert torch.equal(bs(ue(x)), model(x))
        assert len(ue) == cut and len(bs) == len(model) - cut
    assert model(x).shape == (5, 10)


def test_bad_cut_model_and_dataset_names_are_rejected_with_the_allowed_values() -> None:
    model = build_model("mlp", seed=0)
    with pytest.raises(ValueError, match=r"cut must be in 1\.\.3, got 4"):
        split_model(model, 4)
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("resnet", seed=0)
    with pytest.raises(ValueError, match=r"dataset must be one of \['digits', 'mnist'\], got 'cifar'"):
        load_split("cifar", seed=0)


def test_same_seed_same_weights() -> None:
    a, b = build_model("cnn", seed=3, dataset="mnist"), build_model("cnn", seed=3, dataset="mnist")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_mnist_is_the_real_data_set(mnist: DataSplit) -> None:
    """60,000 training and the 10,000 official test images, 28x28, standardised by the training set."""
    assert (len(mnist.train), len(mnist.test)) == (60_000, 10_000)
    assert mnist.input_shape == MNIST_SHAPE and mnist.train.x.dtype == torch.float32
    assert torch.bincount(mnist.test.y).tolist() == MNIST_TEST_COUNTS
    assert torch.bincount(mnist.train.y).sum() == 60_000 and set(mnist.train.y.tolist()) == set(range(10))
    assert abs(float(mnist.train.x.mean())) < 1e-3 and abs(float(mnist.train.x.std()) - 1) < 1e-3
    # Different seeds shuffle the training set, never the test set.
    other = load_split("mnist", seed=1)
    assert torch.equal(other.test.x, mnist.test.x)
    assert not torch.equal(other.train.y[:100], mnist.train.y[:100])
    assert torch.equal(torch.sort(other.train.y).values, torch.sort(mnist.train.y).values)


def test_the_mnist_unpickler_accepts_arrays_and_nothing_else() -> None:
    assert mnist_file().name == "mnist.pkl.gz"
    arrays = pickle.dumps((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2])), protocol=4)
    x, y = _ArrayUnpickler(io.BytesIO(arrays)).load()
    assert x.shape == (2, 3) and y.tolist() == [1, 2]
    with pytest.raises(pickle.UnpicklingError, match=r"refusing os\.system"):
        _ArrayUnpickler(io.BytesIO(b"cos\nsystem\n(S'true'\ntR.")).load()
    with gzip.open(mnist_file()) as f:
        assert f.read(2) == b"\x80\x02"  # a protocol-2 pickle, as the unpickler expects


def test_ue_shards_are_disjoint_and_repeat_every_epoch() -> None:
    data = load_digits_split(seed=0)
    assert len(data.train) + len(data.test) == 1797
    per_epoch = rounds_per_epoch(len(data.train), num_ues=3, batch_per_ue=16)
    # Mark every training sample with its index to see which ones each (UE, round) takes.
    ids = torch.arange(len(data.train), dtype=torch.float32).reshape(-1, 1, 1, 1)
    marked = Dataset(ids, data.train.y)
    taken = [ue_batch(marked, 3, ue, 16, r).x.flatten() for ue in range(3) for r in range(per_epoch)]
    flat = torch.cat(taken).tolist()
    assert len(flat) == 3 * per_epoch * 16 == len(set(flat))
    assert torch.equal(ue_batch(data.train, 3, 1, 16, 2).x, ue_batch(data.train, 3, 1, 16, 2 + per_epoch).x)


@settings(deadline=None, max_examples=40)
@given(st.integers(1, 5), st.integers(1, 40), st.integers(0, 500), st.data())
def test_a_ue_holding_only_its_shard_sees_the_same_batches(
    num_ues: int, batch: int, round_index: int, data: st.DataObject
) -> None:
    size = data.draw(st.integers(num_ues * batch, 400))
    train = Dataset(torch.arange(size, dtype=torch.float32).reshape(-1, 1), torch.arange(size))
    ue = data.draw(st.integers(0, num_ues - 1))
    shard = ue_shard(train, num_ues, ue)
    assert torch.equal(shard_batch(shard, batch, round_index).x, ue_batch(train, num_ues, ue, batch, round_index).x)


def test_batch_larger_than_shard_is_an_error() -> None:
    with pytest.raises(ValueError, match="exceeds a UE's shard"):
        rounds_per_epoch(100, num_ues=4, batch_per_ue=30)
    with pytest.raises(ValueError, match="exceeds a UE's shard of 25 samples"):
        shard_batch(Dataset(torch.zeros(25, 1), torch.zeros(25)), 30, 0)
