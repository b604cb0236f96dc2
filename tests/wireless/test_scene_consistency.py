"""Geometric consistency of generated samples: every modality agrees with the one scene."""

from __future__ import annotations

import numpy as np
import pytest

from edgecloud.wireless.channel import beam_direction_cosines
from edgecloud.wireless.geometry import KINDS


def _inside_any(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return np.any(np.all((points[:, None, :] > lo[None]) & (points[:, None, :] < hi[None]), axis=2), axis=1)


def test_los_flag_agrees_with_blockers(samples: list) -> None:
    """Independently of the slab test: march 4,000 points along the line of sight."""
    assert 0.2 < np.mean([s.los for s in samples]) < 0.95  # both classes are common
    for s in samples:
        scene = s.scene
        steps = np.linspace(0.0, 1.0, 4000)[1:-1, None]
        line = scene.bs + steps * (scene.user - scene.bs)
        blocked = _inside_any(line, scene.obstacles.lo, scene.obstacles.hi).any()
        assert s.los == (not blocked)
        assert ("blocks the line of sight" in s.text) == (not s.los)
        assert ("the line of sight is clear" in s.text) == s.los


def test_los_blockers_are_named_in_the_text(samples: list) -> None:
    for s in samples:
        offset = len(s.scene.buildings)
        for i in s.scene.los_blockers():
            if i >= offset:
                kind = KINDS[s.scene.vehicles.kind[i - offset]]
                assert f"a {kind} " in s.text


def test_strongest_path_points_at_the_user_when_los(samples: list) -> None:
    los = [s for s in samples if s.los]
    assert sum(s.strongest_kind == 0 for s in los) >= 0.9 * len(los)
    for s in los:
        if s.strongest_kind != 0:
            continue
        d = s.scene.user - s.scene.bs
        assert s.strongest_aod[0] == pytest.approx(np.arctan2(d[1], d[0]), abs=1e-9)
        assert s.strongest_aod[1] == pytest.approx(np.arcsin(d[2] / np.linalg.norm(d)), abs=1e-9)


def test_best_beam_agrees_with_the_los_angle(samples: list) -> None:
    cosines = beam_direction_cosines(32)
    diffs = []
    for s in (s for s in samples if s.los and s.strongest_kind == 0):
        d = s.scene.user - s.scene.bs
        nearest = int(np.argmin(np.abs(cosines - d[1] / np.linalg.norm(d))))
        diffs.append(abs(s.best_beam - nearest))
    assert diffs and max(diffs) <= 1
    assert np.mean(np.array(diffs) == 0) >= 0.8


def test_stored_noisy_channel_peaks_at_the_best_beam(samples: list, generator) -> None:
    """The channel a model sees (noise included) has its angular peak where the label says."""
    agree = [
        int(np.argmax((np.abs(generator.codebook.conj() @ s.channel[-1]) ** 2).sum(axis=1)) == s.best_beam)
        for s in samples
    ]
    assert np.mean(agree) >= 0.95


def test_channel_moves_consistently_between_snapshots(samples: list) -> None:
    """Consecutive snapshots are close (5 ms of motion) but not identical (Doppler)."""
    for s in samples[:10]:
        h = s.channel
        change = np.linalg.norm(h[-1] - h[-2]) / np.linalg.norm(h[-2])
        assert 1e-4 < change < 1.5


def test_lidar_points_lie_on_objects_and_image_shows_the_street(samples: list) -> None:
    for s in samples[:8]:
        boxes = s.scene.all_boxes()
        pts = s.lidar[:, :3].astype(np.float64)
        grown = _inside_any(pts, boxes.lo - 0.1, boxes.hi + 0.1)
        assert grown.all()
        assert s.image.shape == (64, 128, 3) and s.image.dtype == np.uint8
        assert s.image[0].mean() > s.image[-1].mean()  # sky above, road below
