"""The bench's bookkeeping (fast), and the full benchmark (``make bench``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgecloud.wireless.bench import BenchConfig, Splits, plot, summary, write_json
from edgecloud.wireless.dataset import load


def _report() -> dict:
    tasks, general = [], []
    values = {
        "los": ("accuracy", 0.9, 0.8),
        "position": ("mean_error_m", 3.0, 4.0),
        "beam": ("top1", 0.5, 0.6),
        "predict": ("nmse_db", -20.0, -15.0),
    }
    for task, (metric, ours, theirs) in values.items():
        for fraction in (0.01, 0.1, 1.0):
            tasks.append({"task": task, "label_fraction": fraction, "model": "wmlm", "metric": metric, "value": ours})
            tasks.append(
                {"task": task, "label_fraction": fraction, "model": "task_specific", "metric": metric, "value": theirs}
            )
        general += [
            {"task": task, "label_fraction": 1.0, "model": m, "metric": metric, "value": v}
            for m, v in (("wmlm", ours), ("task_specific", theirs))
        ]
    retrieval = [
        {"pair": "image->text", "model": "wmlm", "recall_at_1": 0.05, "chance": 0.01, "trained_together": False}
    ]
    return {
        "tasks": tasks,
        "generalisation": general,
        "retrieval": retrieval,
        "reference": {"copy_last_nmse_db": {"test": -10.0, "unseen": -9.0}},
        "config": {"bench": {"fractions": [0.01, 0.1, 1.0]}},
    }


def test_summary_signs_margins_by_metric_direction(tmp_path: Path) -> None:
    rows = {(r["task"], r["label_fraction"]): r for r in summary(_report())}
    assert rows[("los", 0.1)]["wmlm_better_by"] == pytest.approx(0.1)
    assert rows[("position", 0.1)]["wmlm_better_by"] == pytest.approx(1.0)  # lower error is better
    assert rows[("beam", 0.1)]["wmlm_better_by"] == pytest.approx(-0.1)
    assert rows[("predict", 1.0)]["wmlm_better_by"] == pytest.approx(5.0)
    write_json(_report(), tmp_path / "r.json")
    saved = json.loads((tmp_path / "r.json").read_text())
    assert set(saved["tasks"][0]) == {"task", "label_fraction", "model", "metric", "value"}
    assert {"pair", "recall_at_1", "chance"} <= set(saved["retrieval"][0])
    plot(_report(), tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 10_000


def test_splits_are_disjoint_and_label_sets_nest(shard_dir: Path) -> None:
    data = load(shard_dir)
    splits = Splits.of(data, BenchConfig(train_scenes=8, test_scenes=4, unseen_scenes=4))
    assert not set(splits.train) & set(splits.test)
    assert all(data.layouts[i] == "narrow" for i in splits.unseen)
    small, large = splits.labelled(0.25, 0), splits.labelled(0.5, 0)
    assert set(small) <= set(large) <= set(splits.train)
    with pytest.raises(ValueError, match="train scenes"):
        Splits.of(data, BenchConfig(train_scenes=50, test_scenes=4, unseen_scenes=4))
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
    assert len(report["tasks"]) == 2 * 3 * (1 + 2 + 2 + 1)
    assert np.isfinite([r["value"] for r in report["tasks"]]).all()
