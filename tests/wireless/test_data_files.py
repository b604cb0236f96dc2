"""Shards, manifest and determinism of ``edgecloud wireless data``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from edgecloud.wireless.dataset import generate, load, read_manifest


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_seed_same_bytes_any_sharding(shard_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate(again, {"main": 12, "narrow": 4}, seed=3, shard_size=5, workers=2)
    assert _digest(again) == _digest(shard_dir)
    other = tmp_path / "other"
    generate(other, {"main": 12, "narrow": 4}, seed=3, shard_size=3)
    a, b = load(shard_dir), load(other)
    for name in a.arrays:
        np.testing.assert_array_equal(a.arrays[name], b.arrays[name])
    assert a.texts == b.texts


def test_other_seed_other_scenes(shard_dir: Path, tmp_path: Path) -> None:
    generate(tmp_path, {"main": 4}, seed=4)
    assert load(tmp_path).texts != load(shard_dir, ["main"]).texts[:4]


def test_manifest_and_arrays(shard_dir: Path) -> None:
    manifest = read_manifest(shard_dir)
    assert sum(s["count"] for s in manifest["shards"]) == 16
    data = load(shard_dir, verify=True)
    assert len(data) == 16 and data.layouts.count("narrow") == 4
    assert data.arrays["channel"].shape == (16, 4, 32, 32, 2)
    assert data.arrays["image"].shape == (16, 64, 128, 3)
    assert data.arrays["lidar"].shape == (16, 256, 4)
    assert set(np.unique(data.arrays["los"])) <= {0, 1}
    assert np.all(data.arrays["best_beam"] == data.arrays["beam_power"].argmax(axis=1))
    main = load(shard_dir, ["main"])
    assert list(main.indices) == list(range(12))


def test_tampered_shard_is_caught(shard_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in shard_dir.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    records = sorted(copy.glob("*.jsonl"))[0]
    records.write_text(records.read_text().replace("user", "usr", 1))
    with pytest.raises(ValueError, match="sha256"):
        load(copy, verify=True)


def test_bad_requests_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        generate(tmp_path, {"nowhere": 2})
    with pytest.raises(ValueError, match="scenes"):
        generate(tmp_path, {"main": 0})
    with pytest.raises(FileNotFoundError, match="manifest"):
        load(tmp_path / "missing")
