"""Readers for the two public data sets WMLM is trained and evaluated on elsewhere, for users who have them.

**DeepSense 6G** (real, multimodal; arXiv 2211.09769): a scenario folder with a CSV whose rows
point at per-sample files: ``unit1_rgb`` (camera JPEG), ``unit1_pwr_60ghz`` (text file of the
received power of each of the 64 beams), ``unit1_lidar`` (PLY point cloud), ``unit1_loc`` and
``unit2_loc`` (GPS text files, latitude then longitude, of the base station and the user),
``unit1_beam`` (best beam, 1-based) and ``seq_index``; some scenarios add a blockage label.
Paths in the CSV are relative to the scenario folder ("./unit1/...").

**DeepMIMO v4** (ray-traced; deepmimo.net): a scenario folder of matrices named
``{key}_t{tx_set:03}_tx{tx_index:03}_r{rx_set:03}.mat`` (or ``.npz``), each holding one variable
named ``key``: ``rx_pos`` (N x 3), ``tx_pos`` (1 x 3), and per path (N x MAX_PATHS, NaN where
a user has fewer paths) ``power`` (dBW), ``phase`` (degrees), ``delay`` (s), ``aod_az`` and
``aod_el`` (degrees; ``el`` measured from the zenith), ``inter`` (interaction code, 0 = LoS).
The reader turns the paths into the same OFDM channel at the same 1 x 32 array as our generator
(through ``ChannelModel``), and derives the LoS flag and the best DFT beam from them.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgecloud.wireless.channel import ChannelConfig, ChannelModel, Paths

EARTH_RADIUS_M = 6_371_000.0

# -- DeepSense 6G ------------------------------------------------------------------------------

_DEEPSENSE_COLUMNS = {
    "image": re.compile(r"^unit1_rgb(_\d+)?$"),
    "power": re.compile(r"^unit1_pwr(_\d+ghz)?(_\d+)?$"),
    "lidar": re.compile(r"^unit1_lidar(_\d+)?$"),
    "bs_gps": re.compile(r"^unit1_loc(_\d+)?$"),
    "user_gps": re.compile(r"^unit2_loc(_\d+)?$"),
    "beam": re.compile(r"^unit1_beam(_index)?$"),
    "sequence": re.compile(r"^seq_index$"),
    "blockage": re.compile(r"^blockage(_label)?$"),
}


@dataclass
class DeepSenseSamples:
    beam_power: np.ndarray  # (n, beams) received power per beam
    best_beam: np.ndarray  # (n,) 0-based
    position: np.ndarray  # (n, 2) user east/north of the base station, metres
    sequence: np.ndarray  # (n,)
    blockage: np.ndarray | None  # (n,) 1 = blocked, when the scenario labels it
    image_paths: list[Path]
    lidar_paths: list[Path]

    def __len__(self) -> int:
        return len(self.best_beam)

    def image(self, i: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self.image_paths[i]) as img:
            return np.asarray(img.convert("RGB"))

    def lidar(self, i: int) -> np.ndarray:
        return read_ply(self.lidar_paths[i])


def _resolve_columns(header: list[str], path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, pattern in _DEEPSENSE_COLUMNS.items():
        matches = [h for h in header if pattern.match(h.strip())]
        if matches:
            found[name] = sorted(matches, key=len)[0]
    missing = [n for n in ("power", "user_gps", "bs_gps") if n not in found]
    if missing:
        raise ValueError(f"{path}: no column for {missing} (columns: {header})")
    return found


def read_gps(path: Path) -> tuple[float, float]:
    """A DeepSense GPS file: latitude and longitude, the first two numbers in it."""
    numbers = re.findall(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", path.read_text())
    if len(numbers) < 2:
        raise ValueError(f"{path}: expected latitude and longitude, found {len(numbers)} numbers")
    lat, lon = float(numbers[0]), float(numbers[1])
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"{path}: latitude {lat} / longitude {lon} out of range")
    return lat, lon


def gps_to_local(origin: tuple[float, float], points: np.ndarray) -> np.ndarray:
    """(n, 2) lat/lon -> (n, 2) east/north metres from ``origin`` (equirectangular; exact to
    centimetres over a few hundred metres)."""
    lat0 = np.radians(origin[0])
    d_lat = np.radians(points[:, 0] - origin[0])
    d_lon = np.radians(points[:, 1] - origin[1])
    return np.stack([EARTH_RADIUS_M * np.cos(lat0) * d_lon, EARTH_RADIUS_M * d_lat], axis=1)


def load_deepsense(scenario: Path, csv_name: str | None = None) -> DeepSenseSamples:
    """Read a DeepSense 6G scenario folder (the CSV named, else the only/shortest ``*.csv``)."""
    if csv_name is None:
        candidates = sorted(scenario.glob("*.csv"), key=lambda p: (len(p.name), p.name))
        if not candidates:
            raise FileNotFoundError(f"{scenario}: no scenario CSV")
        table = candidates[0]
    else:
        table = scenario / csv_name
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{table}: no rows")
    cols = _resolve_columns(list(rows[0].keys()), table)

    def resolve(value: str) -> Path:
        return scenario / value.strip().lstrip("./") if value.strip().startswith("./") else scenario / value.strip()

    powers = [np.loadtxt(resolve(r[cols["power"]]), dtype=np.float64).ravel() for r in rows]
    if len({p.size for p in powers}) != 1:
        raise ValueError(f"{table}: beam-power files differ in length ({sorted({p.size for p in powers})})")
    beam_power = np.stack(powers)
    if "beam" in cols:
        best = np.array([int(float(r[cols["beam"]])) for r in rows]) - 1
        if best.min() < 0 or best.max() >= beam_power.shape[1]:
            raise ValueError(f"{table}: {cols['beam']} outside 1..{beam_power.shape[1]}")
    else:
        best = beam_power.argmax(axis=1)
    bs = read_gps(resolve(rows[0][cols["bs_gps"]]))
    users = np.array([read_gps(resolve(r[cols["user_gps"]])) for r in rows])
    return DeepSenseSamples(
        beam_power=beam_power,
        best_beam=best,
        position=gps_to_local(bs, users),
        sequence=np.array([int(float(r[cols["sequence"]])) for r in rows])
        if "sequence" in cols
        else np.zeros(len(rows), int),
        blockage=np.array([int(float(r[cols["blockage"]])) for r in rows]) if "blockage" in cols else None,
        image_paths=[resolve(r[cols["image"]]) for r in rows] if "image" in cols else [],
        lidar_paths=[resolve(r[cols["lidar"]]) for r in rows] if "lidar" in cols else [],
    )


_PLY_TYPES = {
    "char": "i1",
    "int8": "i1",
    "uchar": "u1",
    "uint8": "u1",
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "uint": "u4",
    "uint32": "u4",
    "float": "f4",
    "float32": "f4",
    "double": "f8",
    "float64": "f8",
}


def read_ply(path: Path) -> np.ndarray:
    """(n, properties) float32 vertices of a PLY file (ascii or binary little/big endian)."""
    raw = path.read_bytes()
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file")
    body_start = raw.index(b"\n", end) + 1
    header = raw[:end].decode("ascii", "replace").splitlines()
    fmt, count, props, in_vertex = "", 0, [], False
    for line in header:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            in_vertex = parts[1] == "vertex"
            if in_vertex:
                count = int(parts[2])
        elif parts[0] == "property" and in_vertex:
            if parts[1] == "list":
                raise ValueError(f"{path}: list properties on vertices are not supported")
            if parts[1] not in _PLY_TYPES:
                raise ValueError(f"{path}: unknown property type {parts[1]!r}")
            props.append((parts[2], _PLY_TYPES[parts[1]]))
    if not props:
        raise ValueError(f"{path}: no vertex properties")
    if fmt == "ascii":
        values = np.array(raw[body_start:].split()[: count * len(props)], dtype=np.float64)
        if values.size != count * len(props):
            raise ValueError(f"{path}: {values.size} values for {count} vertices x {len(props)} properties")
        return values.reshape(count, len(props)).astype(np.float32)
    order = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(fmt)
    if order is None:
        raise ValueError(f"{path}: unknown PLY format {fmt!r}")
    dtype = np.dtype([(name, order + t) for name, t in props])
    vertices = np.frombuffer(raw, dtype=dtype, count=count, offset=body_start)
    return np.stack([vertices[name].astype(np.float32) for name, _ in props], axis=1)


# -- DeepMIMO v4 -------------------------------------------------------------------------------


@dataclass
class DeepMIMOSamples:
    channel: np.ndarray  # (n, antennas, subcarriers) complex128, path power units (W per W sent)
    position: np.ndarray  # (n, 3) receiver positions
    bs_position: np.ndarray  # (3,)
    los: np.ndarray  # (n,) bool
    best_beam: np.ndarray  # (n,)
    num_paths: np.ndarray  # (n,)

    def __len__(self) -> int:
        return len(self.los)


def _load_matrix(folder: Path, key: str, code: str) -> np.ndarray:
    mat, npz = folder / f"{key}_{code}.mat", folder / f"{key}_{code}.npz"
    if mat.exists():
        from scipy.io import loadmat

        content = loadmat(str(mat))
        if key not in content:
            raise ValueError(f"{mat}: no variable {key!r} (has {[k for k in content if not k.startswith('__')]})")
        return np.asarray(content[key])
    if npz.exists():
        with np.load(npz) as content:
            if key not in content:
                raise ValueError(f"{npz}: no array {key!r} (has {list(content)})")
            return np.asarray(content[key])
    raise FileNotFoundError(f"{folder}: no {key}_{code}.mat or .npz")


def load_deepmimo(
    scenario: Path, tx_set: int = 1, tx_index: int = 0, rx_set: int = 0, config: ChannelConfig | None = None
) -> DeepMIMOSamples:
    """Channels at our 1 x N half-wavelength array (axis +y, broadside +x) from a DeepMIMO v4 scenario."""
    if config is None:
        frequency = None
        params = scenario / "params.json"
        if params.exists():
            frequency = json.loads(params.read_text()).get("rt_params", {}).get("frequency")
        config = ChannelConfig(carrier_frequency=float(frequency)) if frequency else ChannelConfig()
    code = f"t{tx_set:03}_tx{tx_index:03}_r{rx_set:03}"
    m = {
        k: _load_matrix(scenario, k, code).astype(np.float64)
        for k in ("rx_pos", "tx_pos", "power", "phase", "delay", "aod_az", "aod_el", "inter")
    }
    n = m["rx_pos"].shape[0]
    for key in ("power", "phase", "delay", "aod_az", "aod_el", "inter"):
        if m[key].ndim != 2 or m[key].shape[0] != n:
            raise ValueError(f"{scenario}: {key}_{code} must be ({n}, MAX_PATHS), got {m[key].shape}")
    model = ChannelModel(config)
    codebook = model.codebook()
    channels = np.zeros((n, config.num_antennas, config.num_subcarriers), dtype=np.complex128)
    los = np.zeros(n, dtype=bool)
    num_paths = np.zeros(n, dtype=np.int64)
    for u in range(n):
        valid = np.isfinite(m["power"][u]) & np.isfinite(m["delay"][u])
        num_paths[u] = int(valid.sum())
        if not valid.any():
            continue
        az, zen = np.radians(m["aod_az"][u, valid]), np.radians(m["aod_el"][u, valid])
        direction = np.stack([np.sin(zen) * np.cos(az), np.sin(zen) * np.sin(az), np.cos(zen)], axis=1)
        amplitude = np.sqrt(10 ** (m["power"][u, valid] / 10)) * np.exp(1j * np.radians(m["phase"][u, valid]))
        paths = Paths(
            amplitude * model.element_gain(direction),
            m["delay"][u, valid],
            direction,
            np.zeros(num_paths[u], dtype=np.int64),
        )
        channels[u] = model.frequency_response(paths)
        los[u] = bool(np.any(m["inter"][u, valid] == 0))
    power = (np.abs(np.einsum("bn,unk->ubk", codebook.conj(), channels)) ** 2).sum(axis=-1)
    return DeepMIMOSamples(
        channel=channels,
        position=m["rx_pos"],
        bs_position=m["tx_pos"].reshape(-1, 3)[0],
        los=los,
        best_beam=power.argmax(axis=1),
        num_paths=num_paths,
    )
