"""``edgecloud wireless bench``: WMLM against task-specific models, side by side on the same data.

One run: pretrain the wireless-anchored model (or load it), pretrain the ablation that aligns
image and text directly, then for every task and label fraction train both families on the same
labelled rows and test them on the same held-out scenes of the training layout; the 100%-label
models are also tested on the unseen layout. Retrieval is measured on the held-out scenes with
the whole held-out set as the gallery (chance = 1 / its size).

JSON: ``{"tasks": [{"task", "label_fraction", "model", "metric", "value"}],
"retrieval": [{"pair", "model", "recall_at_1", "chance"}], "generalisation": [...], ...}``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgecloud.wireless.dataset import WirelessData, load
from edgecloud.wireless.model import ANCHOR_PAIRS, CONFIGS, DIRECT_PAIRS, WMLM
from edgecloud.wireless.tasks import (
    SENSING_TASKS,
    ProbeConfig,
    copy_last_nmse_db,
    embeddings,
    evaluate_end_to_end,
    evaluate_head,
    fit_end_to_end,
    fit_head,
    fit_predictor_end_to_end,
    fit_predictor_frozen,
    frozen_features,
    labels,
    prediction_nmse_db,
    recall_at_1,
)
from edgecloud.wireless.train import TrainConfig, load_checkpoint, pretrain, save_checkpoint

# The headline metric per task and whether larger is better.
HEADLINE = {
    "los": ("accuracy", True),
    "position": ("mean_error_m", False),
    "beam": ("top1", True),
    "predict": ("nmse_db", False),
}


@dataclass(frozen=True)
class BenchConfig:
    train_scenes: int = 3200
    test_scenes: int = 800
    unseen_scenes: int = 800
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    model: str = "cpu"
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(steps=400))
    probe: ProbeConfig = field(default_factory=lambda: ProbeConfig(max_steps=200))
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in CONFIGS:
            raise ValueError(f"model must be one of {sorted(CONFIGS)}, got {self.model!r}")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must lie in (0, 1], got {self.fractions}")
        if min(self.train_scenes, self.test_scenes, self.unseen_scenes) < 2:
            raise ValueError("train_scenes, test_scenes and unseen_scenes must each be >= 2")


@dataclass(frozen=True)
class Splits:
    train: np.ndarray
    test: np.ndarray
    unseen: np.ndarray

    @staticmethod
    def of(data: WirelessData, config: BenchConfig) -> Splits:
        layouts = np.array(data.layouts)
        main = np.flatnonzero((layouts == "main") & (data.indices < config.train_scenes + config.test_scenes))
        unseen = np.flatnonzero((layouts == "narrow") & (data.indices < config.unseen_scenes))
        train = main[data.indices[main] < config.train_scenes]
        test = main[data.indices[main] >= config.train_scenes]
        for name, rows, want in (
            ("train", train, config.train_scenes),
            ("test", test, config.test_scenes),
            ("unseen", unseen, config.unseen_scenes),
        ):
            if len(rows) < want:
                raise ValueError(f"data has {len(rows)} {name} scenes, the bench wants {want}: generate more")
        return Splits(train, test, unseen)

    def labelled(self, fraction: float, seed: int) -> np.ndarray:
        """The labelled rows at ``fraction``: a prefix of one permutation, so smaller sets nest."""
        order = np.random.default_rng([seed, 11]).permutation(self.train)
        return np.sort(order[: max(2, math.ceil(fraction * len(order)))])


def machine_description(threads: int) -> dict[str, object]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model or platform.processor(),
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "loadavg": list(os.getloadavg()),
    }


def run_bench(
    data_dir: Path,
    config: BenchConfig,
    checkpoint: Path | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> dict[str, object]:
    """Everything in the module docstring; returns the report (also what ``write_json`` writes)."""
    stage = on_stage or (lambda _label: None)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    machine_before = machine_description(threads)
    data = load(data_dir)
    splits = Splits.of(data, config)
    model_config = CONFIGS[config.model]
    timings: dict[str, float] = {}

    @contextmanager
    def timed(label: str) -> Iterator[None]:
        stage(label)
        t0 = time.perf_counter()
        yield
        timings[label] = time.perf_counter() - t0

    pretrain_log: list[dict[str, float]] = []
    if checkpoint is not None and (checkpoint / "model.safetensors").exists():
        model = load_checkpoint(checkpoint)
        meta = json.loads((checkpoint / "config.json").read_text())
        pretrain_log = meta.get("log", [])
        timings["pretrain (loaded)"] = float(meta.get("train_s", float("nan")))
    else:
        with timed("pretrain wmlm (anchored)"):
            model, log = pretrain(data, splits.train, model_config, config.pretrain, ANCHOR_PAIRS)
        pretrain_log.extend(log)
        if checkpoint is not None:
            save_checkpoint(model, checkpoint, {"log": log[-1:], "train_s": timings["pretrain wmlm (anchored)"]})
    ablation_config = TrainConfig(**{**asdict(config.pretrain), "predict_rows": 0})
    with timed("pretrain ablation (image-text direct)"):
        ablation = pretrain(data, splits.train, model_config, ablation_config, DIRECT_PAIRS)[0]

    rows: list[dict[str, object]] = []
    general: list[dict[str, object]] = []
    features = {
        name: frozen_features(model.wireless, data, r)
        for name, r in (("train", splits.train), ("test", splits.test), ("unseen", splits.unseen))
    }
    position_in_train = {int(r): i for i, r in enumerate(splits.train)}

    def record(task: str, fraction: float, family: str, metrics: dict[str, float], into: list) -> None:
        for metric, value in metrics.items():
            into.append({"task": task, "label_fraction": fraction, "model": family, "metric": metric, "value": value})

    for task in SENSING_TASKS:
        test_y, unseen_y = labels(data, splits.test, task), labels(data, splits.unseen, task)
        for fraction in config.fractions:
            labelled = splits.labelled(fraction, config.seed)
            idx = torch.tensor([position_in_train[int(r)] for r in labelled])
            with timed(f"{task} {fraction:.0%} wmlm head"):
                head = fit_head(features["train"][idx], labels(data, labelled, task), task, config.probe)
            with timed(f"{task} {fraction:.0%} task-specific"):
                e2e = fit_end_to_end(data, labelled, task, model_config, config.probe)
            record(task, fraction, "wmlm", evaluate_head(head, features["test"], test_y, task), rows)
            record(task, fraction, "task_specific", evaluate_end_to_end(e2e, data, splits.test, task), rows)
            if fraction == max(config.fractions):
                for family, metrics in (
                    ("wmlm", evaluate_head(head, features["unseen"], unseen_y, task)),
                    ("task_specific", evaluate_end_to_end(e2e, data, splits.unseen, task)),
                ):
                    record(task, fraction, family, metrics, general)

    copy_last = {
        "test": copy_last_nmse_db(data, splits.test, model_config),
        "unseen": copy_last_nmse_db(data, splits.unseen, model_config),
    }
    pretrained_nmse = prediction_nmse_db(model, data, splits.test)
    for fraction in config.fractions:
        labelled = splits.labelled(fraction, config.seed)
        with timed(f"predict {fraction:.0%} wmlm decoder"):
            tuned = fit_predictor_frozen(load_copy(model), data, labelled, config.probe)
        with timed(f"predict {fraction:.0%} task-specific"):
            scratch = fit_predictor_end_to_end(data, labelled, model_config, config.probe)
        record("predict", fraction, "wmlm", {"nmse_db": prediction_nmse_db(tuned, data, splits.test)}, rows)
        record("predict", fraction, "task_specific", {"nmse_db": prediction_nmse_db(scratch, data, splits.test)}, rows)
        if fraction == max(config.fractions):
            record("predict", fraction, "wmlm", {"nmse_db": prediction_nmse_db(tuned, data, splits.unseen)}, general)
            record(
                "predict",
                fraction,
                "task_specific",
                {"nmse_db": prediction_nmse_db(scratch, data, splits.unseen)},
                general,
            )

    stage("retrieval")
    chance = 1.0 / len(splits.test)
    anchored = embeddings(model, data, splits.test, ["wireless", "image", "lidar", "text"])
    direct = embeddings(ablation, data, splits.test, ["image", "text"])
    retrieval = []
    for name, source, a, b in (
        ("wireless->image", anchored, "wireless", "image"),
        ("wireless->lidar", anchored, "wireless", "lidar"),
        ("wireless->text", anchored, "wireless", "text"),
        ("image->text", anchored, "image", "text"),
        ("text->image", anchored, "text", "image"),
        ("lidar->text", anchored, "lidar", "text"),
        ("image->lidar", anchored, "image", "lidar"),
    ):
        emergent = "wireless" not in (a, b)
        retrieval.append(
            {
                "pair": name,
                "model": "wmlm",
                "recall_at_1": recall_at_1(source[a], source[b]),
                "chance": chance,
                "trained_together": not emergent,
            }
        )
    for name, a, b in (("image->text", "image", "text"), ("text->image", "text", "image")):
        retrieval.append(
            {
                "pair": name,
                "model": "ablation_direct_image_text",
                "recall_at_1": recall_at_1(direct[a], direct[b]),
                "chance": chance,
                "trained_together": True,
            }
        )

    return {
        "tasks": rows,
        "retrieval": retrieval,
        "generalisation": general,
        "reference": {"copy_last_nmse_db": copy_last, "pretrained_decoder_nmse_db": pretrained_nmse},
        "splits": {
            "train": len(splits.train),
            "test": len(splits.test),
            "unseen": len(splits.unseen),
            "train_layout": "main",
            "unseen_layout": "narrow",
        },
        "data": {"dir": str(data_dir), "stats": data.manifest.get("stats")},
        "pretraining": {"final_losses": pretrain_log[-1] if pretrain_log else None},
        "config": {"bench": asdict(config), "model": model_config.to_json()},
        "timings_s": timings,
        "wall_s": time.perf_counter() - started,
        "machine_before": machine_before,
        "machine_after": machine_description(threads),
    }


def load_copy(model: WMLM) -> WMLM:
    """A copy whose decoder can be fine-tuned without touching the original."""
    clone = WMLM(model.config, model.pairs)
    clone.load_state_dict(model.state_dict())
    return clone.eval()


def summary(report: dict[str, object]) -> list[dict[str, object]]:
    """Per task and fraction: both families' headline metric and the margin (wmlm better > 0)."""
    table = {}
    for row in report["tasks"]:  # type: ignore[union-attr]
        metric, _ = HEADLINE[row["task"]]
        if row["metric"] == metric:
            table.setdefault((row["task"], row["label_fraction"]), {})[row["model"]] = row["value"]
    out = []
    for (task, fraction), values in table.items():
        metric, higher = HEADLINE[task]
        margin = values["wmlm"] - values["task_specific"]
        out.append(
            {
                "task": task,
                "label_fraction": fraction,
                "metric": metric,
                "wmlm": values["wmlm"],
                "task_specific": values["task_specific"],
                "wmlm_better_by": margin if higher else -margin,
            }
        )
    return out


def write_json(report: dict[str, object], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**report, "summary": summary(report)}, indent=2) + "\n")


def plot(report: dict[str, object], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    titles = {
        "los": "LoS/NLoS accuracy",
        "position": "localisation error (m)",
        "beam": "beam top-1 accuracy",
        "predict": "next-snapshot NMSE (dB)",
    }
    rows = summary(report)
    for ax, task in zip(axes.flat, ("los", "position", "beam", "predict"), strict=False):
        for family, style in (("wmlm", "o-"), ("task_specific", "s--")):
            points = sorted((r["label_fraction"], r[family]) for r in rows if r["task"] == task)
            ax.plot([p[0] * 100 for p in points], [p[1] for p in points], style, label=family.replace("_", "-"))
        if task == "predict":
            ax.axhline(report["reference"]["copy_last_nmse_db"]["test"], color="grey", ls=":", label="copy last")
        ax.set_xscale("log")
        ax.set_xlabel("labels used (%)")
        ax.set_title(titles[task])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes.flat[4]
    retrieval = report["retrieval"]
    kinds = [
        "ablation" if r["model"] != "wmlm" else "anchored" if r["trained_together"] else "emergent" for r in retrieval
    ]
    names = [f"{r['pair']}\n{kind}" for r, kind in zip(retrieval, kinds, strict=True)]
    ax.bar(
        range(len(retrieval)),
        [r["recall_at_1"] for r in retrieval],
        color=[
            "C0" if r["model"] == "wmlm" and r["trained_together"] else "C2" if r["model"] == "wmlm" else "C3"
            for r in retrieval
        ],
    )
    ax.axhline(5 * retrieval[0]["chance"], color="k", ls=":", label="5 x chance")
    ax.set_xticks(range(len(retrieval)), names, rotation=70, fontsize=7)
    ax.set_title(f"retrieval recall@1 (gallery {round(1 / retrieval[0]['chance'])})")
    ax.legend(fontsize=8)
    ax = axes.flat[5]
    general = report["generalisation"]
    labels_, main_v, unseen_v = [], [], []
    for task in ("los", "position", "beam", "predict"):
        metric, _ = HEADLINE[task]
        for family in ("wmlm", "task_specific"):
            seen = [
                r["value"]
                for r in report["tasks"]
                if r["task"] == task
                and r["model"] == family
                and r["metric"] == metric
                and r["label_fraction"] == max(report["config"]["bench"]["fractions"])
            ]
            new = [r["value"] for r in general if r["task"] == task and r["model"] == family and r["metric"] == metric]
            if seen and new:
                labels_.append(f"{task}\n{'wmlm' if family == 'wmlm' else 'task'}")
                main_v.append(seen[0])
                unseen_v.append(new[0])
    change = [(u - m) / abs(m) * 100 if m else 0.0 for m, u in zip(main_v, unseen_v, strict=True)]
    ax.bar(range(len(change)), change, color=["C0" if "wmlm" in n else "C1" for n in labels_])
    ax.set_xticks(range(len(change)), labels_, fontsize=7)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_title("unseen layout: change of the metric (%)")
    fig.suptitle("WMLM (frozen, light heads) vs task-specific models on the same labels")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
