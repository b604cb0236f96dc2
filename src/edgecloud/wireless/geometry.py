"""Axis-aligned boxes and rays: the one piece of geometry every modality of a scene is made from.

The radio paths (is the line of sight blocked? where does a facade reflect?), the camera image
and the LiDAR points are all computed from the same boxes with the same slab test, so a truck
that blocks the line of sight in the channel is also the truck that hides the user in the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Object classes; the index is stored in the shards (``Boxes.kind``) and names the text's nouns.
KINDS: tuple[str, ...] = ("building", "car", "van", "truck", "bus", "user")
KIND_INDEX = {name: i for i, name in enumerate(KINDS)}


@dataclass(frozen=True)
class Boxes:
    """``n`` axis-aligned boxes: ``lo``/``hi`` corners (n, 3) in metres and a class index each."""

    lo: np.ndarray
    hi: np.ndarray
    kind: np.ndarray

    def __post_init__(self) -> None:
        if self.lo.shape != self.hi.shape or self.lo.ndim != 2 or self.lo.shape[1] != 3:
            raise ValueError(f"Boxes: lo and hi must both be (n, 3), got {self.lo.shape} and {self.hi.shape}")
        if self.kind.shape != (self.lo.shape[0],):
            raise ValueError(f"Boxes: kind must be ({self.lo.shape[0]},), got {self.kind.shape}")
        if np.any(self.hi <= self.lo):
            raise ValueError("Boxes: every hi corner must exceed its lo corner on all three axes")

    def __len__(self) -> int:
        return int(self.lo.shape[0])

    @property
    def centre(self) -> np.ndarray:
        return (self.lo + self.hi) / 2

    def select(self, mask: np.ndarray) -> Boxes:
        return Boxes(self.lo[mask], self.hi[mask], self.kind[mask])

    @staticmethod
    def concat(parts: list[Boxes]) -> Boxes:
        return Boxes(
            np.concatenate([p.lo for p in parts]).reshape(-1, 3),
            np.concatenate([p.hi for p in parts]).reshape(-1, 3),
            np.concatenate([p.kind for p in parts]).astype(np.int64),
        )


def ray_box_hits(origin: np.ndarray, dirs: np.ndarray, boxes: Boxes) -> tuple[np.ndarray, np.ndarray]:
    """Slab test of every ray against every box.

    ``origin`` (3,), ``dirs`` (r, 3) (need not be unit). Returns ``t_enter`` and ``t_exit`` (r, n):
    the ray parameters where ray i enters and leaves box j; a miss has ``t_enter > t_exit``.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / dirs[:, None, :]  # (r, 1, 3); +-inf on axis-parallel rays is what the slab test wants
        t1 = (boxes.lo[None, :, :] - origin) * inv
        t2 = (boxes.hi[None, :, :] - origin) * inv
    # An axis-parallel ray inside a slab gives 0 * inf = nan; such a slab never limits the ray.
    near = np.where(np.isnan(t1), -np.inf, np.minimum(t1, t2))
    far = np.where(np.isnan(t2), np.inf, np.maximum(t1, t2))
    return near.max(axis=2), far.min(axis=2)


def segment_blockers(start: np.ndarray, end: np.ndarray, boxes: Boxes, margin: float = 1e-6) -> np.ndarray:
    """Indices of the boxes that the open segment ``start -> end`` passes through."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    t_in, t_out = ray_box_hits(start, (end - start)[None, :], boxes)
    t_in, t_out = t_in[0], t_out[0]
    hit = (t_in < t_out) & (t_out > margin) & (t_in < 1.0 - margin)
    return np.flatnonzero(hit)


@dataclass(frozen=True)
class RayHits:
    """Nearest hit per ray: distance along the (unit) ray, box index (-1: ground, -2: nothing), normal."""

    distance: np.ndarray
    box: np.ndarray
    normal: np.ndarray


def cast_rays(origin: np.ndarray, dirs: np.ndarray, boxes: Boxes, max_range: float) -> RayHits:
    """First surface each unit ray meets among the boxes and the ground plane z = 0."""
    num = dirs.shape[0]
    distance = np.full(num, np.inf)
    box = np.full(num, -2, dtype=np.int64)
    normal = np.zeros((num, 3))
    down = dirs[:, 2] < 0
    ground_t = np.where(down, -origin[2] / np.where(down, dirs[:, 2], -1.0), np.inf)
    ground = ground_t < max_range
    distance[ground] = ground_t[ground]
    box[ground] = -1
    normal[ground] = (0.0, 0.0, 1.0)
    if len(boxes):
        t_in, t_out = ray_box_hits(origin, dirs, boxes)
        valid = (t_in < t_out) & (t_in > 0)
        t_first = np.where(valid, t_in, np.inf)
        nearest = t_first.argmin(axis=1)
        t_near = t_first[np.arange(num), nearest]
        closer = t_near < np.minimum(distance, max_range)
        distance[closer] = t_near[closer]
        box[closer] = nearest[closer]
        # The face hit is the one whose slab was entered last: the axis where the entry plane lies.
        point = origin + dirs[closer] * t_near[closer, None]
        lo, hi = boxes.lo[nearest[closer]], boxes.hi[nearest[closer]]
        gap = np.stack([np.abs(point - lo), np.abs(point - hi)], axis=1)  # (k, 2, 3)
        flat = gap.reshape(gap.shape[0], -1).argmin(axis=1)
        side, axis = flat // 3, flat % 3
        face = np.zeros((point.shape[0], 3))
        face[np.arange(point.shape[0]), axis] = np.where(side == 0, -1.0, 1.0)
        normal[closer] = face
    distance[box == -2] = np.inf
    return RayHits(distance, box, normal)
