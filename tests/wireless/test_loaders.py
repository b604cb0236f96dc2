"""DeepSense 6G and DeepMIMO v4 readers, on small files written here in those formats."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from edgecloud.wireless.channel import beam_direction_cosines
from edgecloud.wireless.loaders import gps_to_local, load_deepmimo, load_deepsense, read_ply

BS = (33.420000, -111.930000)


def _write_ply(path: Path, points: np.ndarray, binary: bool) -> None:
    header = (
        "ply\nformat {} 1.0\ncomment synthetic\nelement vertex {}\nproperty float x\nproperty float y\n"
        "property float z\nproperty uchar intensity\nend_header\n"
    ).format("binary_little_endian" if binary else "ascii", len(points))
    if binary:
        rows = np.zeros(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("i", "u1")])
        rows["x"], rows["y"], rows["z"], rows["i"] = points[:, 0], points[:, 1], points[:, 2], points[:, 3]
        path.write_bytes(header.encode() + rows.tobytes())
    else:
        path.write_text(header + "\n".join(" ".join(f"{v:g}" for v in p) for p in points) + "\n")


def _deepsense(root: Path) -> None:
    for sub in ("unit1/camera_data", "unit1/mmWave_data", "unit1/lidar_data", "unit1/GPS_data", "unit2/GPS_data"):
        (root / sub).mkdir(parents=True)
    (root / "unit1/GPS_data/gps_location.txt").write_text(f"{BS[0]}\n{BS[1]}\n")
    rows = []
    for i in range(3):
        power = np.full(64, 0.01)
        power[10 + 20 * i] = 1.0
        np.savetxt(root / f"unit1/mmWave_data/mmWave_power_{i}.txt", power)
        Image.fromarray(np.full((4, 6, 3), 40 * i, dtype=np.uint8)).save(root / f"unit1/camera_data/image_{i}.jpg")
        pts = np.array([[1.0, 2.0, 0.5, 7], [3.0, -1.0, 1.5, 9]]) + i
        _write_ply(root / f"unit1/lidar_data/lidar_{i}.ply", pts, binary=i % 2 == 1)
        (root / f"unit2/GPS_data/gps_location_{i}.txt").write_text(f"{BS[0] + 0.0001 * i}\n{BS[1] + 0.0001}\n")
        rows.append(
            {
                "index": i + 1,
                "unit1_rgb": f"./unit1/camera_data/image_{i}.jpg",
                "unit1_pwr_60ghz": f"./unit1/mmWave_data/mmWave_power_{i}.txt",
                "unit1_lidar": f"./unit1/lidar_data/lidar_{i}.ply",
                "unit1_loc": "./unit1/GPS_data/gps_location.txt",
                "unit2_loc": f"./unit2/GPS_data/gps_location_{i}.txt",
                "unit1_beam": 11 + 20 * i,
                "seq_index": 1,
            }
        )
    with (root / "scenario9.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_deepsense_scenario(tmp_path: Path) -> None:
    _deepsense(tmp_path)
    data = load_deepsense(tmp_path)
    assert len(data) == 3
    assert list(data.best_beam) == [10, 30, 50]  # 1-based in the CSV
    assert np.all(data.beam_power.argmax(axis=1) == data.best_beam)
    # 0.0001 deg of latitude is 11.12 m north; of longitude at 33.42 N, 9.28 m east
    np.testing.assert_allclose(data.position[1], [9.28, 11.12], atol=0.02)
    assert data.image(2).shape == (4, 6, 3)
    np.testing.assert_allclose(data.lidar(1), [[2.0, 3.0, 1.5, 8], [4.0, 0.0, 2.5, 10]])
    np.testing.assert_allclose(data.lidar(0)[:, :3], [[1.0, 2.0, 0.5], [3.0, -1.0, 1.5]])


def test_deepsense_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="CSV"):
        load_deepsense(tmp_path)
    (tmp_path / "s.csv").write_text("index,unit1_rgb\n1,./a.jpg\n")
    with pytest.raises(ValueError, match="power"):
        load_deepsense(tmp_path)
    bad = tmp_path / "bad.ply"
    bad.write_text("not a ply")
    with pytest.raises(ValueError, match="PLY"):
        read_ply(bad)


def test_gps_to_local_is_metric() -> None:
    out = gps_to_local(BS, np.array([[BS[0], BS[1]], [BS[0] + 0.001, BS[1]]]))
    np.testing.assert_allclose(out, [[0, 0], [0, 111.19]], atol=0.01)


def _deepmimo(root: Path, suffix: str) -> None:
    nan = np.nan
    matrices = {
        "rx_pos": np.array([[20.0, 11.547, 1.5], [30.0, -5.0, 1.5], [40.0, 0.0, 1.5]]),
        "tx_pos": np.array([[0.0, 0.0, 1.5]]),
        "power": np.array([[-80.0, -95.0], [-100.0, nan], [nan, nan]]),
        "phase": np.array([[0.0, 90.0], [45.0, nan], [nan, nan]]),
        "delay": np.array([[7.7e-8, 1.2e-7], [1.5e-7, nan], [nan, nan]]),
        "aod_az": np.array([[30.0, -40.0], [-20.0, nan], [nan, nan]]),
        "aod_el": np.array([[90.0, 92.0], [90.0, nan], [nan, nan]]),
        "inter": np.array([[0.0, 1.0], [1.0, nan], [nan, nan]]),
    }
    for key, value in matrices.items():
        name = root / f"{key}_t001_tx000_r000{suffix}"
        if suffix == ".mat":
            savemat(str(name), {key: value})
        else:
            np.savez(name, **{key: value})


@pytest.mark.parametrize("suffix", [".mat", ".npz"])
def test_deepmimo_v4_scenario(tmp_path: Path, suffix: str) -> None:
    _deepmimo(tmp_path, suffix)
    data = load_deepmimo(tmp_path)
    assert list(data.los) == [True, False, False]
    assert list(data.num_paths) == [2, 1, 0]
    assert data.channel.shape == (3, 32, 32)
    assert np.all(data.channel[2] == 0)
    cosines = beam_direction_cosines(32)
    assert data.best_beam[0] == int(np.argmin(np.abs(cosines - np.sin(np.radians(30.0)))))
    assert data.best_beam[1] == int(np.argmin(np.abs(cosines - np.sin(np.radians(-20.0)))))
    np.testing.assert_allclose(data.bs_position, [0, 0, 1.5])


def test_deepmimo_missing_matrix_is_named(tmp_path: Path) -> None:
    _deepmimo(tmp_path, ".npz")
    (tmp_path / "inter_t001_tx000_r000.npz").unlink()
    with pytest.raises(FileNotFoundError, match="inter_t001_tx000_r000"):
        load_deepmimo(tmp_path)
