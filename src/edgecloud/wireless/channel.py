"""The wireless modality: a multi-antenna OFDM channel from the scene's geometry.

A geometric multipath model (a map-based hybrid in the sense of 3GPP TR 38.901 §8): specular
paths come from the boxes of the scene, and a stochastic diffuse part follows the 3GPP UMi
street-canyon parameters. Built with Sionna (``sionna-no-rt``, PyTorch, no TensorFlow): the base
station is Sionna's TR 38.901 ``PanelArray`` (1 x 32, 38.901 element pattern, half-wavelength
spacing), its element field pattern weights every path, the subcarriers are Sionna's
``subcarrier_frequencies`` and the diffuse clusters take their statistics (delay and angle spreads,
K-factor, cluster count, delay scaling, per-cluster spread) from Sionna's UMi parameter tables.

Paths, per snapshot (the user moves between snapshots; every geometric path is recomputed):

- line of sight, attenuated by the vehicles or buildings it passes through (``BLOCKAGE_DB``);
- a ground reflection and a first-order reflection off each building facade (image method),
  each dropped where its legs are blocked;
- single-bounce scattering off every vehicle (bistatic radar equation);
- ``num_clusters`` diffuse clusters of four rays, drawn once per scene and moved by Doppler.

Sionna RT (ray tracing with Mitsuba) also runs here, but at 0.1-0.9 s per receiver on this CPU
(``scripts/wmlm_sionna_rt_probe.py``), too slow for thousands of scenes of new geometry; docs/wmlm.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from importlib import resources

import numpy as np

from edgecloud.wireless.geometry import KIND_INDEX, KINDS, Boxes, segment_blockers
from edgecloud.wireless.scene import Scene

SPEED_OF_LIGHT = 299_792_458.0

# Extra loss of a blocked line of sight, per blocking object (dB): vehicles from the 3GPP blockage
# model's range (TR 38.901 §7.6.4, 15-30 dB), a building as practically opaque.
BLOCKAGE_DB: dict[str, float] = {"building": 40.0, "car": 12.0, "van": 18.0, "truck": 25.0, "bus": 28.0}
# Radar cross-sections (m^2) for vehicle scattering.
RCS_M2: dict[str, float] = {"car": 10.0, "van": 20.0, "truck": 40.0, "bus": 50.0}
FACADE_REFLECTION = 0.45  # |Gamma| of concrete at oblique incidence (about -7 dB)
GROUND_REFLECTION = 0.35
# TR 38.901 Table 7.5-3: ray offset angles within a cluster (the first four, in units of the
# cluster's spread); with four rays per cluster.
RAY_OFFSETS = np.array([0.0447, -0.0447, 0.1413, -0.1413])


@dataclass(frozen=True)
class ChannelConfig:
    carrier_frequency: float = 3.5e9
    num_antennas: int = 32
    num_subcarriers: int = 32
    subcarrier_spacing: float = 3.125e6  # 32 sampled subcarriers across 100 MHz
    # The UE sounds the uplink (SRS) at 23 dBm; the base station estimates the channel from it.
    tx_power_dbm: float = 23.0
    noise_figure_db: float = 7.0
    num_clusters: int = 12

    def __post_init__(self) -> None:
        if not 0.5e9 <= self.carrier_frequency <= 100e9:
            raise ValueError(
                f"carrier_frequency must be in [0.5, 100] GHz (UMi validity), got {self.carrier_frequency}"
            )
        for name in ("num_antennas", "num_subcarriers", "num_clusters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def wavelength(self) -> float:
        return SPEED_OF_LIGHT / self.carrier_frequency

    @property
    def bandwidth(self) -> float:
        return self.num_subcarriers * self.subcarrier_spacing

    @property
    def noise_power_w(self) -> float:
        """Thermal noise over the band at the receiver, in watts (per observed channel entry)."""
        dbm = -174.0 + 10 * np.log10(self.bandwidth) + self.noise_figure_db
        return 10 ** ((dbm - 30) / 10)


@dataclass(frozen=True)
class Paths:
    """Multipath components of one snapshot: complex gain (incl. element pattern), delay, direction."""

    gain: np.ndarray  # (p,) complex
    delay: np.ndarray  # (p,) seconds
    direction: np.ndarray  # (p, 3) unit departure vectors at the BS
    kind: np.ndarray  # (p,) 0 LoS, 1 reflection, 2 vehicle scattering, 3 diffuse

    @property
    def strongest(self) -> int:
        return int(np.argmax(np.abs(self.gain)))


def _umi_parameters(los: bool) -> dict[str, float]:
    """Sionna's TR 38.901 UMi street-canyon tables (the newest release it ships)."""
    from sionna.phy.channel.tr38901 import models

    name = "UMi_LoS.json" if los else "UMi_NLoS.json"
    folders = sorted(p.name for p in resources.files(models).iterdir() if p.name.startswith("v"))
    return json.loads(resources.files(models).joinpath(folders[-1], name).read_text())


def umi_pathloss_db(distance_3d: np.ndarray | float, carrier_frequency: float, los: bool) -> np.ndarray:
    """TR 38.901 Table 7.4.1-1, UMi street canyon (breakpoint ignored: all our links are short)."""
    d = np.maximum(np.asarray(distance_3d, dtype=np.float64), 1.0)
    fc = carrier_frequency / 1e9
    pl_los = 32.4 + 21 * np.log10(d) + 20 * np.log10(fc)
    if los:
        return pl_los
    # the UE-height term -0.3 (h_UT - 1.5) vanishes at our 1.5 m antenna
    return np.maximum(pl_los, 35.3 * np.log10(d) + 22.4 + 21.3 * np.log10(fc))


class ChannelModel:
    """Channel of a scene's snapshots at the base station's 1 x N array."""

    def __init__(self, config: ChannelConfig | None = None) -> None:
        self.config = config or ChannelConfig()

    @cached_property
    def _array(self) -> object:
        from sionna.phy.channel.tr38901 import PanelArray

        c = self.config
        return PanelArray(
            num_rows_per_panel=1,
            num_cols_per_panel=c.num_antennas,
            polarization="single",
            polarization_type="V",
            antenna_pattern="38.901",
            carrier_frequency=c.carrier_frequency,
            precision="double",
        )

    @cached_property
    def antenna_positions(self) -> np.ndarray:
        """(N, 3) element positions relative to the array centre (metres), along y."""
        return self._array.ant_pos.numpy().astype(np.float64)

    @cached_property
    def frequencies(self) -> np.ndarray:
        from sionna.phy.channel import subcarrier_frequencies

        c = self.config
        return subcarrier_frequencies(c.num_subcarriers, c.subcarrier_spacing, precision="double").numpy()

    @cached_property
    def _umi(self) -> dict[bool, dict[str, float]]:
        return {True: _umi_parameters(True), False: _umi_parameters(False)}

    def element_gain(self, direction: np.ndarray) -> np.ndarray:
        """Amplitude of the 38.901 element pattern (vertical polarisation) towards unit ``direction``."""
        import torch

        theta = np.arccos(np.clip(direction[:, 2], -1.0, 1.0))
        phi = np.arctan2(direction[:, 1], direction[:, 0])
        f_theta, _ = self._array.ant_pol1.field(torch.from_numpy(theta), torch.from_numpy(phi))
        return f_theta.numpy().astype(np.float64)

    def steering(self, direction: np.ndarray) -> np.ndarray:
        """(p, N) array response exp(j 2 pi r_n . d / lambda) for unit departure directions."""
        phase = 2 * np.pi / self.config.wavelength * (direction @ self.antenna_positions.T)
        return np.exp(1j * phase)

    # -- paths ---------------------------------------------------------------------------------

    def _leg_blocked(self, a: np.ndarray, b: np.ndarray, obstacles: Boxes, skip: int = -1) -> bool:
        hits = segment_blockers(a, b, obstacles)
        return bool(np.any(hits != skip))

    def geometric_paths(
        self, scene: Scene, snapshot: int
    ) -> tuple[list[complex], list[float], list[np.ndarray], list[int]]:
        c = self.config
        k = 2 * np.pi / c.wavelength
        bs = scene.bs
        ue = scene.user_positions[snapshot]
        obstacles = scene.obstacles
        gains: list[complex] = []
        delays: list[float] = []
        dirs: list[np.ndarray] = []
        kinds: list[int] = []

        def add(length: float, amplitude: float, departure: np.ndarray, kind: int, extra_phase: float = 0.0) -> None:
            gains.append(amplitude * np.exp(-1j * (k * length) + 1j * extra_phase))
            delays.append(length / SPEED_OF_LIGHT)
            dirs.append(departure / np.linalg.norm(departure))
            kinds.append(kind)

        # Line of sight, through whatever blocks it.
        d = np.linalg.norm(ue - bs)
        blockers = segment_blockers(bs, ue, obstacles)
        loss = sum(BLOCKAGE_DB[KINDS[obstacles.kind[i]]] for i in blockers)
        add(d, 10 ** (-(umi_pathloss_db(d, c.carrier_frequency, True) + loss) / 20), ue - bs, 0)

        # Ground reflection: the BS mirrored below z = 0; the bounce point splits the legs by height.
        image = bs * np.array([1.0, 1.0, -1.0])
        t = bs[2] / (bs[2] + ue[2])
        point = np.array([bs[0] + t * (ue[0] - bs[0]), bs[1] + t * (ue[1] - bs[1]), 0.0])
        if not (self._leg_blocked(bs, point, obstacles) or self._leg_blocked(point, ue, obstacles)):
            length = float(np.linalg.norm(ue - image))
            amp = GROUND_REFLECTION * 10 ** (-umi_pathloss_db(length, c.carrier_frequency, True) / 20)
            add(length, amp, point - bs, 1, np.pi)

        # First-order facade reflections (image method on the planes y = +-width/2).
        half = scene.layout.street_width / 2
        buildings = scene.buildings
        for side in (-1.0, 1.0):
            plane = side * half
            image = np.array([bs[0], 2 * plane - bs[1], bs[2]])
            denom = ue[1] - image[1]
            if abs(denom) < 1e-9:
                continue
            t = (plane - image[1]) / denom
            if not 0 < t < 1:
                continue
            point = image + t * (ue - image)
            on_facade = (
                (buildings.lo[:, 0] <= point[0])
                & (point[0] <= buildings.hi[:, 0])
                & (point[2] <= buildings.hi[:, 2])
                & (np.abs((buildings.lo[:, 1] if side > 0 else buildings.hi[:, 1]) - plane) < 1e-6)
            )
            if not on_facade.any():
                continue
            nudge = np.array([0.0, -side * 1e-3, 0.0])  # start the legs just off the wall
            if self._leg_blocked(bs, point + nudge, obstacles) or self._leg_blocked(point + nudge, ue, obstacles):
                continue
            length = float(np.linalg.norm(ue - image))
            amp = FACADE_REFLECTION * 10 ** (-umi_pathloss_db(length, c.carrier_frequency, True) / 20)
            add(length, amp, point - bs, 1, np.pi)

        # Single-bounce scattering off each vehicle (bistatic radar equation).
        vehicles_offset = len(scene.buildings)
        for j in range(len(scene.vehicles)):
            lo, hi = scene.vehicles.lo[j], scene.vehicles.hi[j]
            # the middle of the end face that looks back along the street towards the mast
            face_x = lo[0] if bs[0] < lo[0] else hi[0]
            point = np.array([face_x, (lo[1] + hi[1]) / 2, 0.6 * hi[2]])
            d1, d2 = float(np.linalg.norm(point - bs)), float(np.linalg.norm(ue - point))
            own = vehicles_offset + j
            if self._leg_blocked(bs, point, obstacles, own) or self._leg_blocked(point, ue, obstacles, own):
                continue
            rcs = RCS_M2[KINDS[scene.vehicles.kind[j]]]
            amp = np.sqrt(c.wavelength**2 * rcs / ((4 * np.pi) ** 3 * d1**2 * d2**2))
            add(d1 + d2, amp, point - bs, 2)
        return gains, delays, dirs, kinds

    def diffuse_clusters(self, scene: Scene, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """3GPP UMi clusters for the scene (TR 38.901 §7.5 steps 4-7, departure side), drawn once."""
        c = self.config
        los = scene.is_los()
        p = self._umi[los]
        fc = c.carrier_frequency / 1e9

        def lsp(name: str) -> float:
            mu = p[f"mu{name}a"] * np.log10(p[f"mu{name}b"] + fc) + p[f"mu{name}c"]
            sigma = p[f"sigma{name}a"] * np.log10(p[f"sigma{name}b"] + fc) + p[f"sigma{name}c"]
            return float(10 ** rng.normal(mu, sigma))

        ds, asd = lsp("DS"), min(lsp("ASD"), 104.0)
        n = c.num_clusters
        r_tau = p["rTau"]
        tau = np.sort(-r_tau * ds * np.log(rng.uniform(1e-6, 1.0, n)))
        tau -= tau[0]
        power = np.exp(-tau * (r_tau - 1) / (r_tau * ds)) * 10 ** (-rng.normal(0, p["zeta"], n) / 10)
        power /= power.sum()
        spread = 2 * (asd / 1.4) * np.sqrt(-np.log(power / power.max())) / p["CPhiNLoS"]
        sign = rng.choice([-1.0, 1.0], n)
        aod = sign * spread + rng.normal(0, asd / 7, n)  # degrees, relative to the LoS azimuth
        zod = rng.normal(0, 3.0, n)  # degrees, relative to the LoS elevation
        aoa = rng.uniform(-180.0, 180.0, n)  # at the user, absolute azimuth
        k_factor_db = rng.normal(p.get("muK", 9.0), p.get("sigmaK", 5.0)) if los else rng.normal(3.0, 3.0)
        rays = len(RAY_OFFSETS)
        return {
            "tau": np.repeat(tau, rays),
            "power": np.repeat(power / rays, rays),
            "aod": (aod[:, None] + p["cASD"] * RAY_OFFSETS[None, :]).ravel(),
            "zod": np.repeat(zod, rays),
            "aoa": (aoa[:, None] + p["cASA"] * RAY_OFFSETS[None, :]).ravel(),
            "phase": rng.uniform(-np.pi, np.pi, n * rays),
            "k_factor_db": np.array(k_factor_db),
        }

    def paths(self, scene: Scene, snapshot: int, clusters: dict[str, np.ndarray]) -> Paths:
        c = self.config
        gains, delays, dirs, kinds = self.geometric_paths(scene, snapshot)
        bs = scene.bs
        ue = scene.user_positions[snapshot]
        d = float(np.linalg.norm(ue - bs))
        los_dir = (ue - bs) / d
        # Diffuse power: 1/K of the unblocked LoS power at this distance.
        reference = 10 ** (-umi_pathloss_db(d, c.carrier_frequency, True) / 10)
        total = reference * 10 ** (-float(clusters["k_factor_db"]) / 10)
        az = np.arctan2(los_dir[1], los_dir[0]) + np.deg2rad(clusters["aod"])
        el = np.arcsin(los_dir[2]) + np.deg2rad(clusters["zod"])
        cluster_dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1)
        # Doppler: the user's displacement along each ray's arrival direction shifts its phase.
        arrival = np.deg2rad(clusters["aoa"])
        arrival_dirs = np.stack([np.cos(arrival), np.sin(arrival), np.zeros_like(arrival)], axis=1)
        shift = (arrival_dirs @ scene.user_velocity) * scene.times[snapshot]
        phase = (
            clusters["phase"]
            + 2 * np.pi * shift / c.wavelength
            - 2 * np.pi * c.carrier_frequency * (d / SPEED_OF_LIGHT)
        )
        cluster_gain = np.sqrt(total * clusters["power"]) * np.exp(1j * phase)
        cluster_delay = d / SPEED_OF_LIGHT + clusters["tau"]
        direction = np.concatenate([np.array(dirs), cluster_dirs])
        gain = np.concatenate([np.array(gains), cluster_gain]) * self.element_gain(direction)
        return Paths(
            gain=gain,
            delay=np.concatenate([np.array(delays), cluster_delay]),
            direction=direction,
            kind=np.concatenate([np.array(kinds), np.full(len(cluster_gain), 3)]),
        )

    def frequency_response(self, paths: Paths) -> np.ndarray:
        """(N antennas, K subcarriers) complex channel; summed path by path, so bit-reproducible."""
        steer = self.steering(paths.direction)  # (p, N)
        phase = np.exp(-2j * np.pi * paths.delay[:, None] * self.frequencies[None, :])  # (p, K)
        terms = paths.gain[:, None, None] * steer[:, :, None] * phase[:, None, :]
        return terms.sum(axis=0)

    def codebook(self, num_beams: int | None = None) -> np.ndarray:
        """(B, N) unit-norm DFT beams: beam b steers to direction cosine ``beam_direction_cosines(B)[b]``
        along the array axis (B = N: the orthogonal DFT codebook of a half-wavelength ULA)."""
        beams = num_beams or self.config.num_antennas
        u = beam_direction_cosines(beams)
        phase = 2 * np.pi / self.config.wavelength * u[:, None] * self.antenna_positions[None, :, 1]
        return np.exp(1j * phase) / np.sqrt(self.config.num_antennas)

    def add_noise(self, channel: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The pilot-based estimate a receiver has: the channel plus thermal noise at the set power."""
        c = self.config
        scale = np.sqrt(10 ** ((c.tx_power_dbm - 30) / 10))
        sigma = np.sqrt(c.noise_power_w / 2)
        noise = rng.normal(0, sigma, channel.shape) + 1j * rng.normal(0, sigma, channel.shape)
        return scale * channel + noise


def beam_direction_cosines(num_beams: int) -> np.ndarray:
    """Direction cosine along the array axis (+y) that each DFT beam steers to; beam 0 is the -y end."""
    return -1 + (2 * np.arange(num_beams) + 1) / num_beams


def beam_powers(channel: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Received power of each beam summed over subcarriers; ``channel`` is (N, K)."""
    return (np.abs(codebook.conj() @ channel) ** 2).sum(axis=-1)


def best_beam(channel: np.ndarray, codebook: np.ndarray) -> int:
    return int(np.argmax(beam_powers(channel, codebook)))


__all__ = [
    "KIND_INDEX",
    "ChannelConfig",
    "ChannelModel",
    "Paths",
    "beam_direction_cosines",
    "beam_powers",
    "best_beam",
    "umi_pathloss_db",
]
