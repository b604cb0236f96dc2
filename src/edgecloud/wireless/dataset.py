"""Generate WMLM's multimodal samples into shards, and read them back.

One scene gives one sample: the channel at ``num_snapshots`` instants (the user moving), and for
the last instant the labels (best DFT beam, position, LoS flag) and the other modalities (camera
image, LiDAR points, text). Scene ``i`` of layout ``L`` draws everything from
``numpy.random.default_rng([seed, layout_id, i])``, so a sample does not depend on which shard or
process made it and the same seed gives the same bytes.

On disk: ``manifest.json`` and, per shard, ``<layout>-<k>.safetensors`` (arrays) and
``<layout>-<k>.jsonl`` (text and the scene's objects, one line per sample).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgecloud.wireless.channel import ChannelConfig, ChannelModel
from edgecloud.wireless.geometry import KINDS
from edgecloud.wireless.scene import LAYOUTS, Scene, layout_by_name, sample_scene
from edgecloud.wireless.sensors import CameraConfig, LidarConfig, render_camera, scan_lidar
from edgecloud.wireless.text import describe

FORMAT_VERSION = 1
LAYOUT_IDS = {name: i for i, name in enumerate(LAYOUTS)}
ARRAY_FIELDS = (
    "channel",
    "beam_power",
    "best_beam",
    "position",
    "bs_position",
    "los",
    "image",
    "lidar",
    "strongest_aod",
)


@dataclass(frozen=True)
class GeneratorConfig:
    num_snapshots: int = 4
    # 1 ms: a user at 8 m/s moves a tenth of a wavelength (3.5 GHz), so snapshots stay correlated
    snapshot_interval_s: float = 0.001
    blocked_share: float = 0.4
    # Stored channel = received amplitude (sqrt(W)) x 10^(scale/20), in float16.
    channel_scale_db: float = 80.0
    channel: ChannelConfig = field(default_factory=ChannelConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    lidar: LidarConfig = field(default_factory=LidarConfig)

    def __post_init__(self) -> None:
        if self.num_snapshots < 2:
            raise ValueError(
                f"num_snapshots must be >= 2 (channel prediction needs a history), got {self.num_snapshots}"
            )
        if self.snapshot_interval_s <= 0:
            raise ValueError(f"snapshot_interval_s must be > 0, got {self.snapshot_interval_s}")
        if not 0 <= self.blocked_share <= 1:
            raise ValueError(f"blocked_share must be in [0, 1], got {self.blocked_share}")

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass
class Sample:
    scene: Scene
    channel: np.ndarray  # (T, N, K) complex128, received amplitude incl. noise
    clean: np.ndarray  # (N, K) complex128, the last snapshot without noise
    beam_power: np.ndarray  # (B,)
    best_beam: int
    los: bool
    strongest_aod: np.ndarray  # (2,) azimuth, elevation (rad) of the strongest path now
    strongest_kind: int
    image: np.ndarray
    lidar: np.ndarray
    text: str


class SampleGenerator:
    def __init__(self, config: GeneratorConfig | None = None, seed: int = 0) -> None:
        self.config = config or GeneratorConfig()
        self.seed = seed
        self.model = ChannelModel(self.config.channel)
        self.codebook = self.model.codebook()

    def sample(self, layout: str, index: int) -> Sample:
        c = self.config
        rng = np.random.default_rng([self.seed, LAYOUT_IDS[layout], index])
        scene = sample_scene(layout_by_name(layout), rng, c.num_snapshots, c.snapshot_interval_s, c.blocked_share)
        clusters = self.model.diffuse_clusters(scene, rng)
        snapshots = []
        paths = None
        for t in range(c.num_snapshots):
            paths = self.model.paths(scene, t, clusters)
            snapshots.append(self.model.frequency_response(paths))
        assert paths is not None
        clean = snapshots[-1]
        noisy = np.stack([self.model.add_noise(h, rng) for h in snapshots])
        power = (np.abs(self.codebook.conj() @ clean) ** 2).sum(axis=-1)
        strongest = paths.direction[paths.strongest]
        return Sample(
            scene=scene,
            channel=noisy,
            clean=clean,
            beam_power=power,
            best_beam=int(np.argmax(power)),
            los=scene.is_los(),
            strongest_aod=np.array([np.arctan2(strongest[1], strongest[0]), np.arcsin(strongest[2])]),
            strongest_kind=int(paths.kind[paths.strongest]),
            image=render_camera(scene, c.camera),
            lidar=scan_lidar(scene, rng, c.lidar),
            text=describe(scene),
        )

    def arrays(self, sample: Sample) -> dict[str, np.ndarray]:
        scale = 10 ** (self.config.channel_scale_db / 20)
        h = sample.channel * scale
        return {
            "channel": np.stack([h.real, h.imag], axis=-1).astype(np.float16),
            "beam_power": (sample.beam_power * scale**2).astype(np.float32),
            "best_beam": np.array(sample.best_beam, dtype=np.int64),
            "position": sample.scene.user.astype(np.float32),
            "bs_position": sample.scene.bs.astype(np.float32),
            "los": np.array(sample.los, dtype=np.uint8),
            "image": sample.image,
            "lidar": sample.lidar,
            "strongest_aod": sample.strongest_aod.astype(np.float32),
        }


def _scene_record(sample: Sample) -> dict[str, object]:
    s = sample.scene
    return {
        "text": sample.text,
        "layout": s.layout.name,
        "velocity": [round(float(v), 4) for v in s.user_velocity],
        "vehicles": [
            {"kind": KINDS[k], "lo": [round(float(v), 4) for v in lo], "hi": [round(float(v), 4) for v in hi]}
            for k, lo, hi in zip(s.vehicles.kind, s.vehicles.lo, s.vehicles.hi, strict=True)
        ],
        "los_blockers": [int(i) for i in s.los_blockers()],
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_shard(
    out: Path,
    layout: str,
    first: int,
    count: int,
    seed: int,
    config: GeneratorConfig | None,
    stem: str,
    on_sample: Callable[[], None] | None = None,
) -> dict[str, object]:
    from safetensors.numpy import save_file

    generator = SampleGenerator(config, seed)
    columns: dict[str, list[np.ndarray]] = {name: [] for name in ARRAY_FIELDS}
    records = []
    los_count = 0
    for i in range(first, first + count):
        sample = generator.sample(layout, i)
        for name, value in generator.arrays(sample).items():
            columns[name].append(value)
        records.append(json.dumps({"index": i, **_scene_record(sample)}, sort_keys=True))
        los_count += int(sample.los)
        if on_sample is not None:
            on_sample()
    tensors = {name: np.ascontiguousarray(np.stack(values)) for name, values in columns.items()}
    save_file(tensors, str(out / f"{stem}.safetensors"), metadata={"format_version": str(FORMAT_VERSION)})
    (out / f"{stem}.jsonl").write_text("\n".join(records) + "\n")
    return {
        "layout": layout,
        "first_index": first,
        "count": count,
        "los": los_count,
        "arrays": f"{stem}.safetensors",
        "records": f"{stem}.jsonl",
        "sha256": {"arrays": _sha256(out / f"{stem}.safetensors"), "records": _sha256(out / f"{stem}.jsonl")},
    }


def generate(
    out: Path,
    scenes: dict[str, int],
    seed: int = 0,
    config: GeneratorConfig | None = None,
    shard_size: int = 250,
    workers: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, object]:
    """Write ``scenes[layout]`` samples per layout into ``out`` and return the manifest.

    ``workers`` > 1 makes shards in parallel processes; the bytes do not change (each sample
    has its own random stream). ``on_progress(n)`` is called as ``n`` more samples are done.
    """
    from concurrent.futures import ProcessPoolExecutor

    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    for layout, count in scenes.items():
        layout_by_name(layout)
        if count < 1:
            raise ValueError(f"scenes[{layout!r}] must be >= 1, got {count}")
    config = config or GeneratorConfig()
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (layout, first, min(shard_size, count - first), f"{layout}-{first // shard_size:05d}")
        for layout, count in scenes.items()
        for first in range(0, count, shard_size)
    ]
    if workers == 1:
        step = (lambda: on_progress(1)) if on_progress is not None else None
        shards = [_write_shard(out, layout, first, n, seed, config, stem, step) for layout, first, n, stem in jobs]
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = [
                pool.submit(_write_shard, out, layout, first, n, seed, config, stem) for layout, first, n, stem in jobs
            ]
            shards = []
            for future, (_, _, n, _) in zip(futures, jobs, strict=True):
                shards.append(future.result())
                if on_progress is not None:
                    on_progress(n)
    stats = {
        layout: {
            "scenes": count,
            "los_share": sum(s["los"] for s in shards if s["layout"] == layout) / count,  # type: ignore[misc]
        }
        for layout, count in scenes.items()
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "generator": config.to_json(),
        "layouts": {name: asdict(LAYOUTS[name]) for name in scenes},
        "stats": stats,
        "shards": shards,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


@dataclass
class WirelessData:
    """All samples of some layouts as arrays (first axis: sample), plus their texts."""

    arrays: dict[str, np.ndarray]
    texts: list[str]
    layouts: list[str]
    indices: np.ndarray
    manifest: dict[str, object]

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, rows: np.ndarray) -> WirelessData:
        rows = np.asarray(rows)
        return WirelessData(
            {k: v[rows] for k, v in self.arrays.items()},
            [self.texts[i] for i in rows],
            [self.layouts[i] for i in rows],
            self.indices[rows],
            self.manifest,
        )

    def channel_complex(self) -> np.ndarray:
        """(n, T, N, K) complex64 channel in stored units."""
        h = self.arrays["channel"].astype(np.float32)
        return h[..., 0] + 1j * h[..., 1]


def read_manifest(root: Path) -> dict[str, object]:
    path = root / "manifest.json"
    if not path.exists():
        raise FileNotFoundError(f"{root}: no manifest.json (generate with `edgecloud wireless data --out {root}`)")
    manifest = json.loads(path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {manifest.get('format_version')!r}, this reader wants {FORMAT_VERSION}"
        )
    return manifest


def _shards(root: Path, manifest: dict[str, object], layouts: set[str] | None) -> Iterator[dict[str, object]]:
    for shard in manifest["shards"]:  # type: ignore[union-attr]
        if layouts is None or shard["layout"] in layouts:
            yield shard


def load(root: Path, layouts: list[str] | None = None, verify: bool = False) -> WirelessData:
    """Read the shards of ``layouts`` (all when None); ``verify`` checks every file's sha256."""
    from safetensors.numpy import load_file

    manifest = read_manifest(root)
    wanted = set(layouts) if layouts is not None else None
    columns: dict[str, list[np.ndarray]] = {}
    texts: list[str] = []
    names: list[str] = []
    indices: list[int] = []
    for shard in _shards(root, manifest, wanted):
        for key in ("arrays", "records"):
            if verify and _sha256(root / shard[key]) != shard["sha256"][key]:
                raise ValueError(f"{root / shard[key]}: sha256 differs from the manifest")
        for name, value in load_file(str(root / shard["arrays"])).items():
            columns.setdefault(name, []).append(value)
        for line in (root / shard["records"]).read_text().splitlines():
            record = json.loads(line)
            texts.append(record["text"])
            names.append(record["layout"])
            indices.append(record["index"])
    if not texts:
        raise ValueError(f"{root}: no shards for layouts {sorted(wanted) if wanted else 'any'}")
    arrays = {name: np.concatenate(values) for name, values in columns.items()}
    return WirelessData(arrays, texts, names, np.array(indices), manifest)
