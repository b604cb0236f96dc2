"""The bench's bookkeeping (fast), and the full benchmark (``make bench``)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecloud.wireless.bench import BenchConfig, Splits, merge_reports, plot, retrieval_summary, summary, write_json
from edgecloud.wireless.dataset import load


def _report(seed: int = 0, shift: float = 0.0) -> dict:
    tasks, general = [], []
    values = {
        "los": ("accuracy", 0.9, 0.95, 0.8),
        "position": ("mean_error_m", 3.0, 2.0, 4.0),
        "beam": ("top1", 0.5, 0.7, 0.6),
        "predict": ("nmse_db", -20.0, -21.0, -15.0),
    }
    for task, (metric, frozen, tuned, theirs) in values.items():
        family_values = (("wmlm", frozen + shift), ("wmlm_finetuned", tuned), ("task_specific", theirs))
        for fraction in (0.01, 0.1, 1.0):
            tasks += [
                {"task": task, "label_fraction": fraction, "model": m, "metric": metric, "value": v, "seed": seed}
                for m, v in family_values
            ]
        general += [
            {"task": task, "label_fraction": 1.0, "model": m, "metric": metric, "value": v, "seed": seed}
            for m, v in family_values
        ]
    retrieval = [
        {
            "pair": "image->text",
            "model": "wmlm",
            "recall_at_1": 0.05 + shift,
            "chance": 0.01,
            "trained_together": False,
            "seed": seed,
        }
    ]
    bench = {"fractions": [0.01, 0.1, 1.0], "seed": seed, "pretrain": {"seed": seed}, "probe": {"seed": seed}}
    return {
        "tasks": tasks,
        "generalisation": general,
        "retrieval": retrieval,
        "reference": {"copy_last_nmse_db": {"test": -10.0, "unseen": -9.0}},
        "config": {"bench": bench, "model": {"dim": 64}},
    }


def test_summary_signs_margins_by_metric_direction(tmp_path: Path) -> None:
    rows = {(r["task"], r["label_fraction"], r["model"]): r for r in summary(_report())}
    assert len(rows) == 4 * 3 * 2  # both pretrained families, each against the task-specific one
    assert rows[("los", 0.1, "wmlm")]["wmlm_better_by"] == pytest.approx(0.1)
    assert rows[("position", 0.1, "wmlm")]["wmlm_better_by"] == pytest.approx(1.0)  # lower error is better
    assert rows[("beam", 0.1, "wmlm")]["wmlm_better_by"] == pytest.approx(-0.1)
    assert rows[("beam", 0.1, "wmlm_finetuned")]["wmlm_better_by"] == pytest.approx(0.1)
    assert rows[("predict", 1.0, "wmlm")]["wmlm_better_by"] == pytest.approx(5.0)
    write_json(_report(), tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert {"task", "label_fraction", "model", "metric", "value"} <= set(saved["tasks"][0])
    assert {"pair", "recall_at_1", "chance"} <= set(saved["retrieval"][0])
    plot(_report(), tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_merged_seeds_give_mean_and_range(tmp_path: Path) -> None:
    merged = merge_reports([_report(0, 0.0), _report(1, 0.04)])
    rows = {(r["task"], r["label_fraction"], r["model"]): r for r in summary(merged)}
    los = rows[("los", 1.0, "wmlm")]
    assert los["seeds"] == [0, 1]
    assert los["wmlm_better_by"] == pytest.approx(0.12)
    assert (los["better_by_min"], los["better_by_max"]) == (pytest.approx(0.1), pytest.approx(0.14))
    position = rows[("position", 1.0, "wmlm")]  # lower is better: the larger error of seed 1 counts against
    assert (position["better_by_min"], position["better_by_max"]) == (pytest.approx(0.96), pytest.approx(1.0))
    (image_text,) = retrieval_summary(merged)
    assert image_text["recall_at_1"] == pytest.approx(0.07)
    assert image_text["times_chance"] == pytest.approx(7.0)
    assert (image_text["recall_min"], image_text["recall_max"]) == (pytest.approx(0.05), pytest.approx(0.09))
    plot(merged, tmp_path / "m.png")
    with pytest.raises(ValueError, match="seed 0"):
        merge_reports([_report(0), _report(0)])
    other = _report(1)
    other["config"]["bench"]["fractions"] = [1.0]
    with pytest.raises(ValueError, match="another configuration"):
        merge_reports([_report(0), other])


def test_splits_are_disjoint_and_label_sets_nest(shard_dir: Path) -> None:
    data = load(shard_dir)
    splits = Splits.of(data, BenchConfig(train_scenes=6, test_scenes=4, unseen_scenes=4, validation_scenes=2))
    assert splits.validation is not None and len(splits.validation) == 2
    parts = [set(splits.train), set(splits.test), set(splits.validation)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert all(data.layouts[i] == "main" and data.indices[i] >= 10 for i in splits.validation)
    assert (
        Splits.of(data, BenchConfig(train_scenes=8, test_scenes=4, unseen_scenes=4, validation_scenes=0)).validation
        is None
    )
    assert all(data.layouts[i] == "narrow" for i in splits.unseen)
    small, large = splits.labelled(0.25, 0), splits.labelled(0.5, 0)
    assert set(small) <= set(large) <= set(splits.train)
    with pytest.raises(ValueError, match="train scenes"):
        Splits.of(data, BenchConfig(train_scenes=50, test_scenes=4, unseen_scenes=4))
    with pytest.raises(ValueError, match="validation scenes"):
        Splits.of(data, BenchConfig(train_scenes=8, test_scenes=4, unseen_scenes=4, validation_scenes=2))
    with pytest.raises(ValueError, match="fractions"):
        BenchConfig(fractions=(0.0,))


@pytest.mark.bench
def test_wmlm_bench(tmp_path: Path, bench_out: Path) -> None:
    """The reported run: data, pretraining, both families on every task and fraction, retrieval.

    Slow (about an hour on two shared cores). Data and checkpoint are reused from
    WMLM_BENCH_DATA / WMLM_BENCH_CHECKPOINT when set (as `edgecloud wireless bench` does).
    Writes OUT/wireless/wmlm_bench.{json,png} (``make bench OUT=DIR``, default out/): copy them over
    docs/data/ and docs/figures/ to refresh docs/wmlm.md.
    """
    from edgecloud.cli import main

    out = bench_out / "wireless"
    out.mkdir(exist_ok=True)
    data = os.environ.get("WMLM_BENCH_DATA", str(tmp_path / "data"))
    args = [
        "wireless",
        "bench",
        "--data",
        data,
        "--json",
        str(out / "wmlm_bench.json"),
        "--plot",
        str(out / "wmlm_bench.png"),
        "--workers",
        "2",
    ]
    if os.environ.get("WMLM_BENCH_CHECKPOINT"):
        args += ["--checkpoint", os.environ["WMLM_BENCH_CHECKPOINT"]]
    assert main(args) == 0
    report = json.loads((out / "wmlm_bench.json").read_text())
    assert len(report["tasks"]) == 3 * 3 * (1 + 2 + 2 + 1)  # families x fractions x metrics of the 4 tasks
    assert np.isfinite([r["value"] for r in report["tasks"]]).all()


def test_bench_runs_every_family_end_to_end_on_tiny_data(shard_dir: Path, tmp_path: Path) -> None:
    """The whole protocol at a few steps: every task, fraction and family gets its rows, the
    diagnostics and the fit on the labelled rows are recorded, and the report merges and plots."""
    from edgecloud.wireless.bench import run_bench
    from edgecloud.wireless.tasks import ProbeConfig
    from edgecloud.wireless.train import TrainConfig

    torch.set_num_threads(1)
    config = BenchConfig(
        train_scenes=6,
        test_scenes=4,
        unseen_scenes=4,
        validation_scenes=2,
        fractions=(0.5, 1.0),
        pretrain=TrainConfig(steps=2, batch_size=4, warmup=1, predict_rows=2),
        probe=ProbeConfig(min_steps=2, max_steps=2, batch_size=4, encoder_lrs=(1e-3, 1e-4), evaluations=2),
    )
    partials: list[dict] = []
    report = run_bench(shard_dir, config, tmp_path / "ckpt", on_partial=partials.append)
    assert (tmp_path / "ckpt" / "model.safetensors").exists()
    assert report["complete"] and not any(p["complete"] for p in partials)
    # retrieval of the anchored model first, then the sensing tasks at 100% before 50%
    assert partials[0]["retrieval"] and not partials[0]["tasks"]
    assert {r["label_fraction"] for r in partials[3]["tasks"]} == {1.0}
    assert [len(p["tasks"]) for p in partials] == sorted(len(p["tasks"]) for p in partials)
    families = {"wmlm", "wmlm_finetuned", "task_specific"}
    for task in ("los", "position", "beam", "predict"):
        for fraction in config.fractions:
            got = {r["model"] for r in report["tasks"] if r["task"] == task and r["label_fraction"] == fraction}
            assert got == families, (task, fraction)
        beside = {"wmlm_attentive_probe"} if task != "predict" else set()
        assert {r["model"] for r in report["generalisation"] if r["task"] == task} == families | beside
    assert {r["model"] for r in report["fit_on_labelled_rows"]} == families | {"wmlm_attentive_probe"}
    assert {r["task"] for r in report["diagnostics"]} == {"los", "position", "beam"}
    # the attentive probe, beside the protocol: every sensing task at every fraction, never in "tasks"
    diagnostics = report["diagnostics"]
    attentive = {(r["task"], r["label_fraction"]) for r in diagnostics if r["model"] == "wmlm_attentive_probe"}
    assert attentive == {(t, f) for t in ("los", "position", "beam") for f in config.fractions}
    assert not any(r["model"] == "wmlm_attentive_probe" for r in report["tasks"])
    assert all(r["seed"] == 0 for r in report["tasks"] + report["retrieval"])
    # every fit records what validation chose; the end-to-end families tried both learning rates
    chosen = {(r["task"], r["label_fraction"], r["model"]): r for r in report["selection"]}
    assert set(chosen) == {
        (t, f, m) for t in ("los", "position", "beam", "predict") for f in config.fractions for m in families
    }
    for (_, _, family), choice in chosen.items():
        if family != "wmlm":
            assert [t["lr"] for t in choice["tried"]] == [1e-3, 1e-4]
            assert choice["score"] == max(t["score"] for t in choice["tried"])
    assert len(summary(report)) == 4 * 2 * 2
    write_json(merge_reports([report]), tmp_path / "r.json")
    again = run_bench(shard_dir, config, tmp_path / "ckpt")  # loads the checkpoint: same frozen numbers

    def frozen(r: dict) -> list:
        return [(t["task"], t["label_fraction"], t["metric"], t["value"]) for t in r["tasks"] if t["model"] == "wmlm"]

    assert frozen(report) == frozen(again)
    other = replace(config, pretrain=replace(config.pretrain, batch_size=6))
    with pytest.raises(ValueError, match="pretrained with"):
        run_bench(shard_dir, other, tmp_path / "ckpt")
