"""Street scenes for WMLM's data: a base station, buildings, vehicles and one moving user.

A ``Layout`` is a street (width, length, base-station mount, building frontage); a ``Scene`` is one
draw on it: vehicles in the lanes and a user on a short straight trajectory, all as axis-aligned
boxes (``geometry.Boxes``). Every modality of a sample is computed from one ``Scene``, which is
what makes the modalities agree (arXiv 2511.21707 aligns wireless with camera, LiDAR and text of
the same instant; DeepSense 6G records them together at one site).

Coordinates: x east along the street, y north across it, z up, metres; the base station's array
faces +x. Two layouts ship: ``main`` (trained on) and ``narrow`` (held out, for generalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgecloud.wireless.geometry import KIND_INDEX, Boxes, segment_blockers

# (length, width, height) in metres, and the odds of each kind in traffic.
VEHICLE_SIZES: dict[str, tuple[float, float, float]] = {
    "car": (4.5, 1.8, 1.5),
    "van": (5.5, 2.0, 2.4),
    "truck": (8.0, 2.5, 3.6),
    "bus": (12.0, 2.6, 3.3),
}
VEHICLE_ODDS: dict[str, float] = {"car": 0.5, "van": 0.2, "truck": 0.15, "bus": 0.15}
# The user rides a scooter: a box this size, the UE antenna at its centre, 1.5 m up.
USER_SIZE = (1.6, 0.7, 1.7)
USER_ANTENNA_HEIGHT = 1.5


@dataclass(frozen=True)
class Layout:
    """A street. Buildings are drawn once from ``seed``; scenes on the layout share them."""

    name: str
    street_width: float
    street_length: float
    bs_position: tuple[float, float, float]
    building_depth: float
    building_heights: tuple[float, float]
    building_widths: tuple[float, float]
    gap_widths: tuple[float, float]
    vehicles: tuple[int, int]
    user_x: tuple[float, float]
    seed: int

    def __post_init__(self) -> None:
        if self.street_width < 6:
            raise ValueError(f"Layout.street_width must be >= 6 m, got {self.street_width}")
        if not 0 < self.user_x[0] < self.user_x[1] < self.street_length:
            raise ValueError(f"Layout.user_x must lie inside (0, street_length), got {self.user_x}")
        if self.vehicles[0] < 0 or self.vehicles[1] < self.vehicles[0]:
            raise ValueError(f"Layout.vehicles must be a range 0 <= lo <= hi, got {self.vehicles}")

    @property
    def lanes(self) -> tuple[float, ...]:
        """y of the lane centres: two traffic lanes and a parking lane on each kerb."""
        half = self.street_width / 2
        return (-half + 1.5, -half / 3, half / 3, half - 1.5)

    def buildings(self) -> Boxes:
        """Blocks along both sides of the street with gaps (side streets) between them."""
        rng = np.random.default_rng([self.seed, 0xB1D])
        half = self.street_width / 2
        lo, hi = [], []
        for side in (-1.0, 1.0):
            x = -10.0
            while x < self.street_length + 10:
                width = rng.uniform(*self.building_widths)
                height = rng.uniform(*self.building_heights)
                y_in, y_out = side * half, side * (half + self.building_depth)
                lo.append((x, min(y_in, y_out), 0.0))
                hi.append((x + width, max(y_in, y_out), height))
                x += width + rng.uniform(*self.gap_widths)
        return Boxes(np.array(lo), np.array(hi), np.full(len(lo), KIND_INDEX["building"]))


LAYOUTS: dict[str, Layout] = {
    "main": Layout(
        name="main",
        street_width=20.0,
        street_length=90.0,
        bs_position=(0.0, 0.0, 6.0),
        building_depth=12.0,
        building_heights=(10.0, 24.0),
        building_widths=(12.0, 30.0),
        gap_widths=(4.0, 10.0),
        vehicles=(3, 9),
        user_x=(8.0, 70.0),
        seed=1,
    ),
    "narrow": Layout(
        name="narrow",
        street_width=13.0,
        street_length=90.0,
        bs_position=(0.0, -4.5, 8.0),
        building_depth=10.0,
        building_heights=(14.0, 30.0),
        building_widths=(8.0, 20.0),
        gap_widths=(3.0, 6.0),
        vehicles=(2, 7),
        user_x=(8.0, 70.0),
        seed=2,
    ),
}


def layout_by_name(name: str) -> Layout:
    if name not in LAYOUTS:
        raise ValueError(f"layout: unknown {name!r}; choose one of {sorted(LAYOUTS)}")
    return LAYOUTS[name]


@dataclass(frozen=True)
class Scene:
    """One draw: vehicles, the user's antenna positions over the snapshots, and its velocity."""

    layout: Layout
    buildings: Boxes
    vehicles: Boxes
    user_positions: np.ndarray  # (num_snapshots, 3): antenna positions; the last is "now"
    user_velocity: np.ndarray  # (3,)
    times: np.ndarray  # (num_snapshots,), seconds; the last is 0

    @property
    def bs(self) -> np.ndarray:
        return np.array(self.layout.bs_position, dtype=np.float64)

    @property
    def user(self) -> np.ndarray:
        """The user's antenna position now (the last snapshot)."""
        return self.user_positions[-1]

    def user_box(self, snapshot: int = -1) -> Boxes:
        centre = self.user_positions[snapshot]
        half = np.array(USER_SIZE) / 2
        lo = np.array([centre[0] - half[0], centre[1] - half[1], 0.0])
        hi = np.array([centre[0] + half[0], centre[1] + half[1], USER_SIZE[2]])
        return Boxes(lo[None], hi[None], np.array([KIND_INDEX["user"]]))

    @property
    def obstacles(self) -> Boxes:
        """Everything that can block a radio path: buildings and vehicles (not the user)."""
        return Boxes.concat([self.buildings, self.vehicles])

    def all_boxes(self, snapshot: int = -1) -> Boxes:
        """What a camera or LiDAR sees: obstacles and the user."""
        return Boxes.concat([self.obstacles, self.user_box(snapshot)])

    def los_blockers(self, snapshot: int = -1) -> np.ndarray:
        """Indices into ``obstacles`` of the boxes on the BS -> user line of sight."""
        return segment_blockers(self.bs, self.user_positions[snapshot], self.obstacles)

    def is_los(self, snapshot: int = -1) -> bool:
        return len(self.los_blockers(snapshot)) == 0


def _vehicle_box(kind: str, x_centre: float, y_centre: float) -> tuple[np.ndarray, np.ndarray]:
    length, width, height = VEHICLE_SIZES[kind]
    lo = np.array([x_centre - length / 2, y_centre - width / 2, 0.0])
    hi = np.array([x_centre + length / 2, y_centre + width / 2, height])
    return lo, hi


def _overlaps(lo: np.ndarray, hi: np.ndarray, los: list[np.ndarray], his: list[np.ndarray], gap: float) -> bool:
    return any(
        lo[0] < h[0] + gap and hi[0] > lo_[0] - gap and lo[1] < h[1] + gap and hi[1] > lo_[1] - gap
        for lo_, h in zip(los, his, strict=True)
    )


def sample_scene(
    layout: Layout,
    rng: np.random.Generator,
    num_snapshots: int,
    snapshot_interval_s: float,
    blocked_share: float = 0.4,
) -> Scene:
    """Draw vehicles and a user trajectory.

    With probability ``blocked_share`` one tall vehicle is parked on the user's line of sight, so
    that both LoS and NLoS samples are common (with a 6-8 m mast only vans, trucks and buses near
    the user block it). The LoS flag is never set here: it is computed from the boxes.
    """
    if num_snapshots < 1:
        raise ValueError(f"num_snapshots must be >= 1, got {num_snapshots}")
    kinds = list(VEHICLE_ODDS)
    odds = np.array([VEHICLE_ODDS[k] for k in kinds])
    half = layout.street_width / 2
    bs = np.array(layout.bs_position)
    los: list[np.ndarray] = []
    his: list[np.ndarray] = []
    kind_ids: list[int] = []

    # The user first, then traffic around it.
    ux = rng.uniform(*layout.user_x)
    uy = rng.uniform(-half + 0.6, half - 0.6)
    user = np.array([ux, uy, USER_ANTENNA_HEIGHT])
    user_lo = np.array([ux - USER_SIZE[0] / 2, uy - USER_SIZE[1] / 2, 0.0])
    user_hi = np.array([ux + USER_SIZE[0] / 2, uy + USER_SIZE[1] / 2, USER_SIZE[2]])

    if rng.uniform() < blocked_share:
        kind = kinds[1 + rng.choice(3, p=odds[1:] / odds[1:].sum())]  # van, truck or bus
        frac = rng.uniform(0.55, 0.92)
        point = bs + frac * (user - bs)
        lo, hi = _vehicle_box(kind, point[0] + rng.uniform(-1.0, 1.0), np.clip(point[1], -half + 1.4, half - 1.4))
        if not _overlaps(lo, hi, [user_lo], [user_hi], 0.4):
            los.append(lo)
            his.append(hi)
            kind_ids.append(KIND_INDEX[kind])

    for _ in range(int(rng.integers(layout.vehicles[0], layout.vehicles[1] + 1))):
        kind = kinds[rng.choice(len(kinds), p=odds)]
        lane = layout.lanes[rng.integers(len(layout.lanes))]
        for _attempt in range(8):
            lo, hi = _vehicle_box(kind, rng.uniform(2.0, layout.street_length - 2.0), lane)
            if not _overlaps(lo, hi, [*los, user_lo], [*his, user_hi], 0.8):
                los.append(lo)
                his.append(hi)
                kind_ids.append(KIND_INDEX[kind])
                break

    vehicles = Boxes(np.array(los).reshape(-1, 3), np.array(his).reshape(-1, 3), np.array(kind_ids, dtype=np.int64))
    speed = rng.uniform(2.0, 8.0)
    heading = rng.uniform(-np.pi, np.pi)
    velocity = np.array([speed * np.cos(heading), speed * np.sin(heading), 0.0])
    times = (np.arange(num_snapshots) - (num_snapshots - 1)) * snapshot_interval_s
    positions = user[None, :] + times[:, None] * velocity[None, :]
    return Scene(layout, layout.buildings(), vehicles, positions, velocity, times)
