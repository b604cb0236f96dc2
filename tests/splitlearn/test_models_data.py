import pytest
import torch

from edgecloud.splitlearn.data import DIGITS_SHAPE, Dataset, load_digits_split, rounds_per_epoch, ue_batch
from edgecloud.splitlearn.models import build_model, split_model, valid_cuts


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_split_parts_compose_to_the_whole_model(name: str) -> None:
    model = build_model(name, seed=0)
    x = torch.randn(5, *DIGITS_SHAPE)
    for cut in valid_cuts(model):
        ue, bs = split_model(model, cut)
        assert torch.equal(bs(ue(x)), model(x))
        assert len(ue) == cut and len(bs) == len(model) - cut


def test_bad_cut_and_model_name_are_rejected_with_the_allowed_range() -> None:
    model = build_model("mlp", seed=0)
    with pytest.raises(ValueError, match=r"cut must be in 1\.\.3, got 4"):
        split_model(model, 4)
    with pytest.raises(ValueError, match="model must be one of"):
        build_model("resnet", seed=0)


def test_same_seed_same_weights() -> None:
    a, b = build_model("cnn", seed=3), build_model("cnn", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


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


def test_batch_larger_than_shard_is_an_error() -> None:
    with pytest.raises(ValueError, match="exceeds a UE's shard"):
        rounds_per_epoch(100, num_ues=4, batch_per_ue=30)
