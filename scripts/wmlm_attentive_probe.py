"""The attentive probe beside the protocol's light head, for a bench run that has already finished.

``edgecloud wireless bench`` runs the attentive probe as one of its stages; runs made before it
existed have their pretrained checkpoint and their report. This loads both, fits the attentive
probe on the frozen encoder (same labelled rows, steps, learning rate and batches as the light
head), refits the protocol's light head on the same tokens as a check that nothing moved (its
numbers must equal the report's), and writes both beside the report's frozen and task-specific
numbers::

    python scripts/wmlm_attentive_probe.py --data /tmp/wmlm-data2 --checkpoint ckpt-s0 \\
        --report docs/data/wmlm_bench_rev2_seed0.json --json docs/data/wmlm_attentive_probe_seed0.json

Nothing is trained but the heads (seconds per head on one core).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from edgecloud.wireless.bench import (
    ATTENTIVE,
    HEADLINE,
    BenchConfig,
    Splits,
    attentive_probe,
    frozen_split_tokens,
    load_pretrained,
    machine_description,
)
from edgecloud.wireless.dataset import load
from edgecloud.wireless.model import WirelessEncoder
from edgecloud.wireless.tasks import SENSING_TASKS, ProbeConfig, evaluate_head, fit_head, labels
from edgecloud.wireless.train import TrainConfig


def bench_config(report: dict) -> BenchConfig:
    bench = dict(report["config"]["bench"])
    return BenchConfig(
        **{
            **bench,
            "fractions": tuple(bench["fractions"]),
            "pretrain": TrainConfig(**bench["pretrain"]),
            "probe": ProbeConfig(**bench["probe"]),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--checkpoint", required=True, type=Path, help="the run's pretrained WMLM")
    parser.add_argument("--report", required=True, type=Path, help="the run's bench JSON")
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    machine_before = machine_description(args.threads)
    report = json.loads(args.report.read_text())
    config = bench_config(report)
    data = load(args.data)
    splits = Splits.of(data, config)
    model, _ = load_pretrained(args.checkpoint, config)
    beside = attentive_probe(model, data, splits, config)

    # The protocol's light head refitted on the same frozen tokens: it must give the report's numbers.
    tokens = frozen_split_tokens(model, data, splits)
    features = {name: WirelessEncoder.features(t) for name, t in tokens.items()}
    position_in_train = {int(r): i for i, r in enumerate(splits.train)}
    reported = {
        (r["task"], r["label_fraction"], r["model"], r["metric"]): r["value"]
        for r in report["tasks"]
        if r["task"] in SENSING_TASKS
    }
    refit_matches = []
    for fraction in sorted(config.fractions, reverse=True):
        labelled = splits.labelled(fraction, config.seed)
        idx = torch.tensor([position_in_train[int(r)] for r in labelled])
        for task in SENSING_TASKS:
            if not any(k[:3] == (task, fraction, "wmlm") for k in reported):
                continue  # that stage did not finish in the bench run
            head = fit_head(features["train"][idx], labels(data, labelled, task), task, config.probe)
            metrics = evaluate_head(head, features["test"], labels(data, splits.test, task), task)
            refit_matches += [metrics[m] == reported[(task, fraction, "wmlm", m)] for m in metrics]

    side_by_side = []
    attentive = {(r["task"], r["label_fraction"], r["metric"]): r["value"] for r in beside["diagnostics"]}
    for (task, fraction, metric), value in attentive.items():
        headline, higher = HEADLINE[task]
        theirs = reported.get((task, fraction, "task_specific", metric))
        frozen = reported.get((task, fraction, "wmlm", metric))
        sign = 1 if higher else -1
        side_by_side.append(
            {
                "task": task,
                "label_fraction": fraction,
                "metric": metric,
                "headline": metric == headline,
                "task_specific": theirs,
                "wmlm_frozen_head": frozen,
                ATTENTIVE: value,
                "attentive_better_than_task_specific_by": None if theirs is None else sign * (value - theirs),
                "attentive_better_than_frozen_head_by": None if frozen is None else sign * (value - frozen),
            }
        )
    out = {
        "seed": config.seed,
        "report": str(args.report),
        "checkpoint": str(args.checkpoint),
        **beside,
        "side_by_side": side_by_side,
        "protocol_head_refit_equals_report": bool(refit_matches) and all(refit_matches),
        "config": report["config"],
        "wall_s": time.perf_counter() - started,
        "machine_before": machine_before,
        "machine_after": machine_description(args.threads),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"seed {config.seed}: protocol head refit equals the report: {out['protocol_head_refit_equals_report']}")
    print("| task | labels | metric | task-specific | frozen + light head | attentive probe | vs task-specific |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for r in side_by_side:
        ts, fh, margin = r["task_specific"], r["wmlm_frozen_head"], r["attentive_better_than_task_specific_by"]
        print(
            f"| {r['task']} | {r['label_fraction']:.0%} | {r['metric']} | "
            f"{'-' if ts is None else f'{ts:.3f}'} | {'-' if fh is None else f'{fh:.3f}'} | {r[ATTENTIVE]:.3f} | "
            f"{'-' if margin is None else f'{margin:+.3f}'} |"
        )


if __name__ == "__main__":
    main()
