"""The base station's camera and LiDAR: images and point sets ray-cast from the scene's boxes.

Both sensors sit on the mast with the antenna array and look down the street (+x), as the RGB
camera and LiDAR of DeepSense 6G's unit 1 do. Because the same boxes block the radio line of
sight, a user hidden behind a truck in the channel is hidden behind it in the image too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecloud.wireless.geometry import KIND_INDEX, KINDS, cast_rays
from edgecloud.wireless.scene import Scene

# Colours (RGB) per object class; buildings get one of several facade tones.
KIND_COLOURS: dict[str, tuple[int, int, int]] = {
    "car": (40, 80, 200),
    "van": (225, 225, 225),
    "truck": (235, 140, 30),
    "bus": (240, 205, 40),
    "user": (220, 30, 30),
}
FACADES = np.array([(170, 160, 150), (150, 140, 135), (190, 175, 160), (130, 130, 140), (165, 150, 125)])
ROAD, PAVEMENT = np.array([70, 70, 75]), np.array([150, 150, 145])
# LiDAR return intensity per class (retro-reflective number plates and hi-vis clothing return more).
INTENSITY: dict[str, float] = {"building": 0.3, "car": 0.7, "van": 0.6, "truck": 0.5, "bus": 0.5, "user": 0.9}


@dataclass(frozen=True)
class CameraConfig:
    width: int = 128
    height: int = 64
    horizontal_fov_deg: float = 110.0
    pitch_deg: float = -8.0
    max_range: float = 150.0

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise ValueError(f"camera width and height must be >= 8 pixels, got {self.width} x {self.height}")
        if not 10 <= self.horizontal_fov_deg < 170:
            raise ValueError(f"horizontal_fov_deg must be in [10, 170), got {self.horizontal_fov_deg}")


@dataclass(frozen=True)
class LidarConfig:
    num_points: int = 256
    elevations_deg: tuple[float, float, int] = (-30.0, -1.0, 24)
    azimuths_deg: tuple[float, float, int] = (-60.0, 60.0, 181)
    max_range: float = 100.0
    range_noise_m: float = 0.02

    def __post_init__(self) -> None:
        if self.num_points < 1:
            raise ValueError(f"lidar num_points must be >= 1, got {self.num_points}")


def _pitch(dirs: np.ndarray, pitch_deg: float) -> np.ndarray:
    p = np.deg2rad(pitch_deg)
    x, y, z = dirs[:, 0], dirs[:, 1], dirs[:, 2]
    return np.stack([x * np.cos(p) - z * np.sin(p), y, x * np.sin(p) + z * np.cos(p)], axis=1)


def render_camera(scene: Scene, config: CameraConfig | None = None) -> np.ndarray:
    """(H, W, 3) uint8 image from the mast: one ray per pixel, shaded by the face it meets."""
    c = config or CameraConfig()
    focal = (c.width / 2) / np.tan(np.deg2rad(c.horizontal_fov_deg) / 2)
    u = np.arange(c.width) + 0.5 - c.width / 2
    v = np.arange(c.height) + 0.5 - c.height / 2
    uu, vv = np.meshgrid(u, v)
    # camera frame: x forward (east), y left (north), z up
    dirs = np.stack([np.full(uu.size, focal), -uu.ravel(), -vv.ravel()], axis=1)
    dirs = _pitch(dirs / np.linalg.norm(dirs, axis=1, keepdims=True), c.pitch_deg)
    boxes = scene.all_boxes()
    hits = cast_rays(scene.bs, dirs, boxes, c.max_range)

    image = np.zeros((dirs.shape[0], 3))
    sky = hits.box == -2
    image[sky] = np.array([150, 190, 235]) + np.outer(np.clip(dirs[sky, 2], 0, 1), [-60, -50, -10])
    ground = hits.box == -1
    points = scene.bs + dirs[ground] * hits.distance[ground, None]
    on_road = np.abs(points[:, 1]) < scene.layout.street_width / 2
    image[ground] = np.where(on_road[:, None], ROAD, PAVEMENT)
    solid = hits.box >= 0
    kinds = boxes.kind[hits.box[solid]]
    colours = np.array(
        [
            KIND_COLOURS[KINDS[k]] if KINDS[k] != "building" else FACADES[b % len(FACADES)]
            for k, b in zip(kinds, hits.box[solid], strict=True)
        ]
    ).reshape(-1, 3)
    normal = hits.normal[solid]
    shade = np.where(normal[:, 2] > 0.5, 1.0, np.where(np.abs(normal[:, 0]) > 0.5, 0.85, 0.65))
    image[solid] = colours * shade[:, None]
    # Haze with distance, so depth shows in the colours.
    fog = np.clip(np.where(np.isfinite(hits.distance), hits.distance, c.max_range) / c.max_range, 0, 1)[:, None] * 0.35
    image = image * (1 - fog) + np.array([200, 210, 220]) * fog
    return np.clip(np.rint(image), 0, 255).astype(np.uint8).reshape(c.height, c.width, 3)


def scan_lidar(scene: Scene, rng: np.random.Generator, config: LidarConfig | None = None) -> np.ndarray:
    """(num_points, 4) float32 points (x, y, z, intensity) of objects, ground returns removed.

    A fixed number of points, as point encoders want: more returns are subsampled, fewer are
    repeated (a max-pooled encoder is unchanged by repeats).
    """
    c = config or LidarConfig()
    el = np.deg2rad(np.linspace(*c.elevations_deg[:2], c.elevations_deg[2]))
    az = np.deg2rad(np.linspace(*c.azimuths_deg[:2], c.azimuths_deg[2]))
    ee, aa = np.meshgrid(el, az, indexing="ij")
    dirs = np.stack([np.cos(ee) * np.cos(aa), np.cos(ee) * np.sin(aa), np.sin(ee)], axis=-1).reshape(-1, 3)
    boxes = scene.all_boxes()
    hits = cast_rays(scene.bs, dirs, boxes, c.max_range)
    keep = np.flatnonzero(hits.box >= 0)
    if keep.size == 0:
        return np.zeros((c.num_points, 4), dtype=np.float32)
    distance = hits.distance[keep] + rng.normal(0, c.range_noise_m, keep.size)
    xyz = scene.bs + dirs[keep] * distance[:, None]
    intensity = np.array([INTENSITY[KINDS[k]] for k in boxes.kind[hits.box[keep]]])
    points = np.concatenate([xyz, intensity[:, None]], axis=1)
    if keep.size >= c.num_points:
        pick = np.sort(rng.choice(keep.size, c.num_points, replace=False))
    else:
        pick = np.concatenate([np.arange(keep.size), rng.choice(keep.size, c.num_points - keep.size)])
    return points[pick].astype(np.float32)


__all__ = ["KIND_INDEX", "CameraConfig", "LidarConfig", "render_camera", "scan_lidar"]
