"""``edgecloud wireless bench``: WMLM against task-specific models, side by side on the same data.

One run (one seed): pretrain the wireless-anchored model (or load it), pretrain the ablation that
aligns image and text directly, then for every task and label fraction train the three families
(frozen WMLM + head, fine-tuned WMLM, task-specific) on the same labelled rows and test them on the
same held-out scenes of the training layout; the 100%-label models are also tested on the unseen
layout. Retrieval is measured on the held-out scenes with the whole held-out set as the gallery
(chance = 1 / its size). Beside the protocol, not compared: an attentive probe on the same frozen
encoder (``attentive_probe``). Runs with other seeds are combined with ``merge_reports``; the summary
then gives each margin's mean and its range over the seeds.

JSON: ``{"tasks": [{"task", "label_fraction", "model", "metric", "value", "seed"}],
"retrieval": [{"pair", "model", "recall_at_1", "chance", "seed"}], "generalisation": [...],
"summary": [...], "retrieval_summary": [...], ...}``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from edgecloud.wireless.dataset import WirelessData, load
from edgecloud.wireless.model import ANCHOR_PAIRS, CONFIGS, DIRECT_PAIRS, WMLM, WirelessEncoder
from edgecloud.wireless.tasks import (
    HEADLINE,
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
    frozen_tokens,
    labels,
    prediction_nmse_db,
    recall_at_1,
)
from edgecloud.wireless.train import TrainConfig, load_checkpoint, pretrain, save_checkpoint

# The families built on the pretrained model, each compared with the task-specific one.
WMLM_FAMILIES = ("wmlm", "wmlm_finetuned")


# The sensing and prediction protocol of the fourth revision (docs/wmlm.md, "Fourth revision"):
# 30 epochs at every fraction (1,500 steps at 100% of 3,200 labels), 5% warm-up, the best of 10
# validation checks, and the encoder learning rate of each end-to-end family chosen on validation.
PROBE = ProbeConfig(max_steps=1500, encoder_lrs=(1e-3, 1e-4), warmup_fraction=0.05)
STAGES = ("attentive", "diagnostics", "predict", "ablation")


@dataclass(frozen=True)
class BenchConfig:
    train_scenes: int = 3200
    test_scenes: int = 800
    unseen_scenes: int = 800
    # main-layout scenes after the test ones, labelled, never trained on: every family's fits are
    # checked on them to keep the best step and encoder learning rate (0: no selection, the last step)
    validation_scenes: int = 320
    fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    model: str = "cpu"
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(steps=400, batch_size=128))
    probe: ProbeConfig = field(default_factory=lambda: PROBE)
    seed: int = 0
    # stages to leave out: "attentive" (the probe beside the protocol), "diagnostics" (the frozen head
    # with 10x steps), "predict" (channel prediction), "ablation" (the image-text pretraining)
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.model not in CONFIGS:
            raise ValueError(f"model must be one of {sorted(CONFIGS)}, got {self.model!r}")
        if not self.fractions or any(not 0 < f <= 1 for f in self.fractions):
            raise ValueError(f"fractions must lie in (0, 1], got {self.fractions}")
        if min(self.train_scenes, self.test_scenes, self.unseen_scenes) < 2:
            raise ValueError("train_scenes, test_scenes and unseen_scenes must each be >= 2")
        if self.validation_scenes == 1 or self.validation_scenes < 0:
            raise ValueError(f"validation_scenes must be 0 or >= 2, got {self.validation_scenes}")
        if set(self.skip) - set(STAGES):
            raise ValueError(f"skip must name stages among {STAGES}, got {self.skip}")


@dataclass(frozen=True)
class Splits:
    train: np.ndarray
    test: np.ndarray
    unseen: np.ndarray
    validation: np.ndarray | None = None

    @staticmethod
    def of(data: WirelessData, config: BenchConfig) -> Splits:
        layouts = np.array(data.layouts)
        end = config.train_scenes + config.test_scenes
        main = np.flatnonzero((layouts == "main") & (data.indices < end + config.validation_scenes))
        unseen = np.flatnonzero((layouts == "narrow") & (data.indices < config.unseen_scenes))
        train = main[data.indices[main] < config.train_scenes]
        test = main[(data.indices[main] >= config.train_scenes) & (data.indices[main] < end)]
        validation = main[data.indices[main] >= end]
        for name, rows, want in (
            ("train", train, config.train_scenes),
            ("test", test, config.test_scenes),
            ("unseen", unseen, config.unseen_scenes),
            ("validation", validation, config.validation_scenes),
        ):
            if len(rows) < want:
                raise ValueError(f"data has {len(rows)} {name} scenes, the bench wants {want}: generate more")
        return Splits(train, test, unseen, validation if config.validation_scenes else None)

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
    on_partial: Callable[[dict[str, object]], None] | None = None,
) -> dict[str, object]:
    """Everything in the module docstring; returns the report (also what ``write_json`` writes).

    Stages run in order of what they answer first, and ``on_partial`` gets the report so far after
    each one (``"complete": False`` until the end), so a run cut short on a busy machine still leaves
    its finished stages: pretraining, the anchored model's retrieval, the sensing tasks at 100%, 10%,
    then 1% of the labels, the attentive probe (beside the protocol), channel prediction, and last
    the image-text ablation. The order changes no number: every fit seeds itself.
    """
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
        model, meta = load_pretrained(checkpoint, config)
        pretrain_log = meta.get("log", [])
        timings["pretrain (loaded)"] = float(meta.get("train_s", float("nan")))
    else:
        with timed("pretrain wmlm (anchored)"):
            model, log = pretrain(data, splits.train, model_config, config.pretrain, ANCHOR_PAIRS)
        pretrain_log.extend(log)
        if checkpoint is not None:
            save_checkpoint(
                model,
                checkpoint,
                {
                    "log": log[-1:],
                    "train_s": timings["pretrain wmlm (anchored)"],
                    "pretrain": asdict(config.pretrain),
                },
            )

    rows: list[dict[str, object]] = []
    general: list[dict[str, object]] = []
    fitted: list[dict[str, object]] = []
    diagnostics: list[dict[str, object]] = []
    selection: list[dict[str, object]] = []
    retrieval: list[dict[str, object]] = []
    reference: dict[str, object] = {}
    chance = 1.0 / len(splits.test)

    def report(complete: bool) -> dict[str, object]:
        return {
            "complete": complete,
            "tasks": list(rows),
            "retrieval": list(retrieval),
            "generalisation": list(general),
            "fit_on_labelled_rows": list(fitted),
            "diagnostics": list(diagnostics),
            "selection": list(selection),
            "reference": dict(reference),
            "splits": {
                "train": len(splits.train),
                "test": len(splits.test),
                "unseen": len(splits.unseen),
                "validation": 0 if splits.validation is None else len(splits.validation),
                "train_layout": "main",
                "unseen_layout": "narrow",
            },
            "data": {"dir": str(data_dir), "stats": data.manifest.get("stats")},
            "pretraining": {"final_losses": pretrain_log[-1] if pretrain_log else None},
            "config": {"bench": asdict(config), "model": model_config.to_json()},
            "timings_s": dict(timings),
            "wall_s": time.perf_counter() - started,
            "machine_before": machine_before,
            "machine_after": machine_description(threads),
        }

    def partial() -> None:
        if on_partial is not None:
            on_partial(report(complete=False))

    def record(task: str, fraction: float, family: str, metrics: dict[str, float], into: list) -> None:
        into.extend(metric_rows(task, fraction, family, metrics, config.seed))

    def chose(task: str, fraction: float, family: str, fitted_model: torch.nn.Module) -> None:
        """What validation chose for a fit: learning rate, step, score (and every rate tried)."""
        choice = getattr(fitted_model, "selection", {})
        selection.append({"task": task, "label_fraction": fraction, "model": family, "seed": config.seed, **choice})

    def add_retrieval(source: dict[str, torch.Tensor], family: str, pairs: tuple[tuple[str, str], ...]) -> None:
        for a, b in pairs:
            retrieval.append(
                {
                    "pair": f"{a}->{b}",
                    "model": family,
                    "recall_at_1": recall_at_1(source[a], source[b]),
                    "chance": chance,
                    "trained_together": family != "wmlm" or "wireless" in (a, b),
                    "seed": config.seed,
                }
            )

    stage("retrieval (anchored)")
    anchored = embeddings(model, data, splits.test, ["wireless", "image", "lidar", "text"])
    add_retrieval(
        anchored,
        "wmlm",
        (
            ("wireless", "image"),
            ("wireless", "lidar"),
            ("wireless", "text"),
            ("image", "text"),
            ("text", "image"),
            ("lidar", "text"),
            ("image", "lidar"),
        ),
    )
    partial()

    features = {name: WirelessEncoder.features(t) for name, t in frozen_split_tokens(model, data, splits).items()}
    position_in_train = {int(r): i for i, r in enumerate(splits.train)}
    val = splits.validation
    for fraction in sorted(config.fractions, reverse=True):
        labelled = splits.labelled(fraction, config.seed)
        idx = torch.tensor([position_in_train[int(r)] for r in labelled])
        for task in SENSING_TASKS:
            test_y, unseen_y, train_y = (labels(data, r, task) for r in (splits.test, splits.unseen, labelled))
            head_val = None if val is None else (features["validation"], labels(data, val, task))
            with timed(f"{task} {fraction:.0%} wmlm head"):
                head = fit_head(features["train"][idx], train_y, task, config.probe, validation=head_val)
            with timed(f"{task} {fraction:.0%} wmlm fine-tuned"):
                tuned = fit_end_to_end(data, labelled, task, model_config, config.probe, model.wireless, val)
            with timed(f"{task} {fraction:.0%} task-specific"):
                e2e = fit_end_to_end(data, labelled, task, model_config, config.probe, validation_rows=val)
            for family, fitted_model in (("wmlm", head), ("wmlm_finetuned", tuned), ("task_specific", e2e)):
                chose(task, fraction, family, fitted_model)
            record(task, fraction, "wmlm", evaluate_head(head, features["test"], test_y, task), rows)
            record(task, fraction, "wmlm_finetuned", evaluate_end_to_end(tuned, data, splits.test, task), rows)
            record(task, fraction, "task_specific", evaluate_end_to_end(e2e, data, splits.test, task), rows)
            # The same metrics on the labelled rows they were fitted to: a family that is poor here
            # too lacks the information (underfits), one that is good here only overfits.
            record(task, fraction, "wmlm", evaluate_head(head, features["train"][idx], train_y, task), fitted)
            for family, fitted_model in (("wmlm_finetuned", tuned), ("task_specific", e2e)):
                record(task, fraction, family, evaluate_end_to_end(fitted_model, data, labelled, task), fitted)
            if fraction == max(config.fractions) and "diagnostics" not in config.skip:
                # Diagnostic, not a compared family: the frozen features with ten times the head's
                # steps (still cheap) -- is the information there, or was the head short of steps?
                long_probe = replace(
                    config.probe,
                    epochs=10 * config.probe.epochs,
                    min_steps=10 * config.probe.min_steps,
                    max_steps=10 * config.probe.max_steps,
                )
                with timed(f"{task} {fraction:.0%} wmlm head, 10x steps (diagnostic)"):
                    long_head = fit_head(features["train"][idx], train_y, task, long_probe, validation=head_val)
                long_metrics = evaluate_head(long_head, features["test"], test_y, task)
                record(task, fraction, "wmlm_head_10x_steps", long_metrics, diagnostics)
            if fraction == max(config.fractions):
                for family, metrics in (
                    ("wmlm", evaluate_head(head, features["unseen"], unseen_y, task)),
                    ("wmlm_finetuned", evaluate_end_to_end(tuned, data, splits.unseen, task)),
                    ("task_specific", evaluate_end_to_end(e2e, data, splits.unseen, task)),
                ):
                    record(task, fraction, family, metrics, general)
            partial()

    if "attentive" not in config.skip:
        with timed("attentive probe on the frozen tokens (beside the protocol)"):
            beside = attentive_probe(model, data, splits, config)
        for key, into in (("diagnostics", diagnostics), ("fit_on_labelled_rows", fitted), ("generalisation", general)):
            into.extend(beside[key])
        partial()
    if "predict" in config.skip and "ablation" in config.skip:
        return report(complete=True)

    reference["copy_last_nmse_db"] = {
        "test": copy_last_nmse_db(data, splits.test, model_config),
        "unseen": copy_last_nmse_db(data, splits.unseen, model_config),
    }
    reference["pretrained_decoder_nmse_db"] = prediction_nmse_db(model, data, splits.test)
    for fraction in sorted(config.fractions, reverse=True) if "predict" not in config.skip else ():
        labelled = splits.labelled(fraction, config.seed)
        with timed(f"predict {fraction:.0%} wmlm decoder"):
            decoder_only = fit_predictor_frozen(load_copy(model), data, labelled, config.probe, val)
        with timed(f"predict {fraction:.0%} wmlm fine-tuned"):
            whole = fit_predictor_end_to_end(data, labelled, model_config, config.probe, model, val)
        with timed(f"predict {fraction:.0%} task-specific"):
            scratch = fit_predictor_end_to_end(data, labelled, model_config, config.probe, validation_rows=val)
        predictors = (("wmlm", decoder_only), ("wmlm_finetuned", whole), ("task_specific", scratch))
        for family, predictor in predictors:
            chose("predict", fraction, family, predictor)
            record("predict", fraction, family, {"nmse_db": prediction_nmse_db(predictor, data, splits.test)}, rows)
            if fraction == max(config.fractions):
                nmse_unseen = prediction_nmse_db(predictor, data, splits.unseen)
                record("predict", fraction, family, {"nmse_db": nmse_unseen}, general)
        partial()

    if "ablation" in config.skip:
        return report(complete=True)
    ablation_config = TrainConfig(**{**asdict(config.pretrain), "predict_rows": 0})
    with timed("pretrain ablation (image-text direct)"):
        ablation = pretrain(data, splits.train, model_config, ablation_config, DIRECT_PAIRS)[0]
    stage("retrieval (ablation)")
    direct = embeddings(ablation, data, splits.test, ["image", "text"])
    add_retrieval(direct, "ablation_direct_image_text", (("image", "text"), ("text", "image")))
    return report(complete=True)


def load_pretrained(checkpoint: Path, config: BenchConfig) -> tuple[WMLM, dict[str, object]]:
    """The pretrained model saved in ``checkpoint`` and its metadata; refused when it was pretrained
    with another configuration than ``config`` asks for."""
    meta = json.loads((checkpoint / "config.json").read_text())
    trained_with = meta.get("pretrain")
    if trained_with is not None and trained_with != asdict(config.pretrain):
        raise ValueError(
            f"{checkpoint} was pretrained with {trained_with}, the bench asks for {asdict(config.pretrain)}: "
            "use another --checkpoint directory"
        )
    return load_checkpoint(checkpoint), meta


def metric_rows(task: str, fraction: float, family: str, metrics: dict[str, float], seed: int) -> list[dict]:
    """Report rows (the issue's keys plus ``seed``), one per metric."""
    return [
        {"task": task, "label_fraction": fraction, "model": family, "metric": m, "value": v, "seed": seed}
        for m, v in metrics.items()
    ]


def frozen_split_tokens(model: WMLM, data: WirelessData, splits: Splits) -> dict[str, torch.Tensor]:
    """The frozen wireless encoder's tokens of every scene of the train, test, unseen (and, when
    there is one, validation) splits."""
    named = [("train", splits.train), ("test", splits.test), ("unseen", splits.unseen)]
    if splits.validation is not None:
        named.append(("validation", splits.validation))
    return {name: frozen_tokens(model.wireless, data, rows) for name, rows in named}


ATTENTIVE = "wmlm_attentive_probe"


def attentive_probe(model: WMLM, data: WirelessData, splits: Splits, config: BenchConfig) -> dict[str, list[dict]]:
    """Beside the protocol, not a compared family: an ``AttentiveHead`` on the same frozen encoder,
    fitted to the same labelled rows with the same steps, learning rate and batches as the protocol's
    light head, for every sensing task and label fraction. It asks whether the light head lost beam
    prediction because it reads the *mean* patch token. Rows (model ``wmlm_attentive_probe``) for
    the held-out test (``diagnostics``), the labelled rows (``fit_on_labelled_rows``) and, at the
    largest fraction, the unseen layout (``generalisation``)."""
    tokens = frozen_split_tokens(model, data, splits)
    position_in_train = {int(r): i for i, r in enumerate(splits.train)}
    out: dict[str, list[dict]] = {"diagnostics": [], "fit_on_labelled_rows": [], "generalisation": []}
    for fraction in sorted(config.fractions, reverse=True):
        labelled = splits.labelled(fraction, config.seed)
        idx = torch.tensor([position_in_train[int(r)] for r in labelled])
        for task in SENSING_TASKS:
            train_y = labels(data, labelled, task)
            val = None if splits.validation is None else (tokens["validation"], labels(data, splits.validation, task))
            head = fit_head(tokens["train"][idx], train_y, task, config.probe, attentive=True, validation=val)
            parts = [
                ("diagnostics", tokens["test"], splits.test),
                ("fit_on_labelled_rows", tokens["train"][idx], labelled),
            ]
            if fraction == max(config.fractions):
                parts.append(("generalisation", tokens["unseen"], splits.unseen))
            for key, x, rows in parts:
                metrics = evaluate_head(head, x, labels(data, rows, task), task)
                out[key].extend(metric_rows(task, fraction, ATTENTIVE, metrics, config.seed))
    return out


def load_copy(model: WMLM) -> WMLM:
    """A copy whose decoder can be fine-tuned without touching the original."""
    clone = WMLM(model.config, model.pairs)
    clone.load_state_dict(model.state_dict())
    return clone.eval()


def _headline_values(report: dict[str, object], rows_key: str = "tasks") -> dict[tuple, dict[int, float]]:
    """{(task, fraction, family): {seed: headline value}} from a report (one seed or merged)."""
    default_seed = report.get("config", {}).get("bench", {}).get("seed", 0)  # type: ignore[union-attr]
    table: dict[tuple, dict[int, float]] = {}
    for row in report[rows_key]:  # type: ignore[union-attr]
        metric, _ = HEADLINE[row["task"]]
        if row["metric"] == metric:
            key = (row["task"], row["label_fraction"], row["model"])
            table.setdefault(key, {})[int(row.get("seed", default_seed))] = float(row["value"])
    return table


def summary(report: dict[str, object]) -> list[dict[str, object]]:
    """Per task, fraction and pretrained family: its headline metric against the task-specific
    model's on the same seeds, and the margin (> 0: the pretrained family is better) as the mean
    over seeds with its min and max."""
    table = _headline_values(report)
    out = []
    for (task, fraction, family), values in table.items():
        theirs = table.get((task, fraction, "task_specific"))
        if family not in WMLM_FAMILIES or not theirs:
            continue
        seeds = sorted(set(values) & set(theirs))
        metric, higher = HEADLINE[task]
        margins = [(values[s] - theirs[s]) * (1 if higher else -1) for s in seeds]
        out.append(
            {
                "task": task,
                "label_fraction": fraction,
                "metric": metric,
                "model": family,
                "value": float(np.mean([values[s] for s in seeds])),
                "task_specific": float(np.mean([theirs[s] for s in seeds])),
                "wmlm_better_by": float(np.mean(margins)),
                "better_by_min": float(min(margins)),
                "better_by_max": float(max(margins)),
                "seeds": seeds,
            }
        )
    return out


def retrieval_summary(report: dict[str, object]) -> list[dict[str, object]]:
    """Per pair and model: recall@1 as the mean over seeds with its min and max, and chance."""
    groups: dict[tuple[str, str], list[dict[str, object]]] = {}
    for row in report["retrieval"]:  # type: ignore[union-attr]
        groups.setdefault((row["pair"], row["model"]), []).append(row)
    out = []
    for (pair, model), group in groups.items():
        recalls = [float(r["recall_at_1"]) for r in group]
        chance = float(group[0]["chance"])
        out.append(
            {
                "pair": pair,
                "model": model,
                "trained_together": group[0]["trained_together"],
                "recall_at_1": float(np.mean(recalls)),
                "recall_min": min(recalls),
                "recall_max": max(recalls),
                "chance": chance,
                "times_chance": float(np.mean(recalls)) / chance,
                "seeds": [r.get("seed") for r in group],
            }
        )
    return out


def merge_reports(reports: list[dict[str, object]]) -> dict[str, object]:
    """One report from runs that differ only in their seed: rows concatenated (each keeps its
    ``seed``), per-run bookkeeping under ``runs``."""
    if not reports:
        raise ValueError("merge_reports needs at least one report")

    def protocol(report: dict[str, object]) -> dict[str, object]:
        bench = dict(report["config"]["bench"])  # type: ignore[index]
        bench.pop("seed", None)
        for part in ("pretrain", "probe"):
            bench[part] = {k: v for k, v in bench[part].items() if k != "seed"}
        return {"bench": bench, "model": report["config"]["model"]}  # type: ignore[index]

    first = protocol(reports[0])
    seeds = []
    for report in reports:
        seed = report["config"]["bench"]["seed"]  # type: ignore[index]
        if protocol(report) != first:
            raise ValueError(f"report of seed {seed} was run with another configuration than the first one")
        if seed in seeds:
            raise ValueError(f"two reports have seed {seed}")
        seeds.append(seed)
    merged: dict[str, object] = {
        key: [row for report in reports for row in report[key]]  # type: ignore[union-attr]
        for key in ("tasks", "retrieval", "generalisation", "fit_on_labelled_rows", "diagnostics", "selection")
        if all(key in report for report in reports)
    }
    keep = ("reference", "pretraining", "timings_s", "wall_s", "machine_before", "machine_after")
    merged["runs"] = [
        {"seed": seed, **{k: r[k] for k in keep if k in r}} for seed, r in zip(seeds, reports, strict=True)
    ]
    merged["seeds"] = seeds
    merged["complete"] = all(report.get("complete", True) for report in reports)
    for key in ("splits", "data"):
        merged[key] = reports[0].get(key)
    merged["config"] = {**reports[0]["config"], "bench": {**reports[0]["config"]["bench"], "seed": seeds}}  # type: ignore[dict-item]
    return merged


def write_json(report: dict[str, object], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {"summary": summary(report), "retrieval_summary": retrieval_summary(report)}
    path.write_text(json.dumps({**report, **extra}, indent=2) + "\n")


def _copy_last_db(report: dict[str, object]) -> float | None:
    runs = report.get("runs") or [report]
    values = [r["reference"]["copy_last_nmse_db"]["test"] for r in runs if "copy_last_nmse_db" in r["reference"]]  # type: ignore[index,operator]
    return float(np.mean(values)) if values else None


# marker/line, colour (the same in every panel), label
FAMILY_STYLE = {
    "wmlm": ("o-", "C0", "WMLM frozen + head"),
    "wmlm_finetuned": ("^-", "C2", "WMLM fine-tuned"),
    "task_specific": ("s--", "C1", "task-specific"),
}


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
    table = _headline_values(report)
    seeds = sorted({s for values in table.values() for s in values})
    for ax, task in zip(axes.flat, ("los", "position", "beam", "predict"), strict=False):
        for family, (style, colour, label) in FAMILY_STYLE.items():
            points = sorted((f, list(v.values())) for (t, f, m), v in table.items() if t == task and m == family)
            if not points:
                continue
            x = [p[0] * 100 for p in points]
            mean = np.array([np.mean(p[1]) for p in points])
            low = mean - np.array([min(p[1]) for p in points])
            high = np.array([max(p[1]) for p in points]) - mean
            ax.errorbar(x, mean, yerr=[low, high], fmt=style, color=colour, capsize=3, label=label)
        if task == "predict" and _copy_last_db(report) is not None:
            ax.axhline(_copy_last_db(report), color="grey", ls=":", label="copy last")
        ax.set_xscale("log")
        ax.set_xlabel("labels used (%)")
        ax.set_title(titles[task])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes.flat[4]
    retrieval = retrieval_summary(report)
    kinds = [
        "ablation" if r["model"] != "wmlm" else "anchored" if r["trained_together"] else "emergent" for r in retrieval
    ]
    names = [f"{r['pair']}\n{kind}" for r, kind in zip(retrieval, kinds, strict=True)]
    ax.bar(
        range(len(retrieval)),
        [r["times_chance"] for r in retrieval],
        yerr=[
            [(r["recall_at_1"] - r["recall_min"]) / r["chance"] for r in retrieval],
            [(r["recall_max"] - r["recall_at_1"]) / r["chance"] for r in retrieval],
        ],
        capsize=2,
        color=[
            "C0" if r["model"] == "wmlm" and r["trained_together"] else "C2" if r["model"] == "wmlm" else "C3"
            for r in retrieval
        ],
    )
    ax.axhline(5, color="k", ls=":", label="5 x chance")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylabel("recall@1 / chance")
    ax.set_xticks(range(len(retrieval)), names, rotation=70, fontsize=7)
    ax.set_title(f"retrieval recall@1 (gallery {round(1 / retrieval[0]['chance'])})")
    ax.legend(fontsize=8)
    ax = axes.flat[5]
    unseen = _headline_values(report, "generalisation")
    names, change, colours = [], [], []
    top = max(f for (_, f, _) in table)
    for task in ("los", "position", "beam", "predict"):
        for family, (_, colour, _) in FAMILY_STYLE.items():
            seen, new = table.get((task, top, family)), unseen.get((task, top, family))
            if not seen or not new:
                continue
            m, u = np.mean(list(seen.values())), np.mean(list(new.values()))
            names.append(f"{task}\n{ {'wmlm': 'frozen', 'wmlm_finetuned': 'tuned'}.get(family, 'task') }")
            change.append((u - m) / abs(m) * 100 if m else 0.0)
            colours.append(colour)
    ax.bar(range(len(change)), change, color=colours)
    ax.set_xticks(range(len(change)), names, fontsize=6)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_title("unseen layout: change of the metric (%)")
    fig.suptitle(
        f"WMLM (frozen + light heads, and fine-tuned) vs task-specific models on the same labels "
        f"({len(seeds)} seed{'s' if len(seeds) > 1 else ''}: mean, bars = min-max)"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
