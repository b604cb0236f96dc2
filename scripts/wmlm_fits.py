"""One family's fits of the WMLM bench protocol, as a separate process, and the combination of such
pieces into the bench's per-seed report.

Why: on two shared cores the bench's fits (3 tasks x 3 families x 3 label fractions, two encoder
learning rates each for the end-to-end families) take over an hour per seed in one process. Every fit
seeds itself (weights from ``torch.manual_seed(seed)``, batches from ``[seed, rows, steps]``), so
the order and the process they run in change no number: this script runs the same library calls as
``run_bench`` (``fit_head``, ``fit_end_to_end``, ``fit_predictor_*`` with the bench's
``PROBE``), one (seed, task, family) per process, and ``--combine`` assembles the pieces into the
report ``edgecloud wireless bench`` would have written (``--merge`` of the CLI then works on them).

Diagnosis of the recipe (``--recipe``): ``rev2`` is the second revision's protocol (at most 200
steps, no warm-up, no validation, encoder learning rate 1e-3), to reproduce its numbers; with
``--curves`` every validation check also records the *test* metrics, reported as a diagnostic of
what the selection rule did -- the selection itself reads the validation rows only.

    python scripts/wmlm_fits.py fit --data D --checkpoint C --seed 1 --task beam --family wmlm_finetuned --out f.json
    python scripts/wmlm_fits.py retrieval --data D --checkpoint C --seed 1 --out r.json
    python scripts/wmlm_fits.py combine --seed 1 --out seed1.json pieces*.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from edgecloud.wireless.bench import (
    PROBE,
    BenchConfig,
    Splits,
    frozen_split_tokens,
    load_copy,
    load_pretrained,
    machine_description,
    metric_rows,
    write_json,
)
from edgecloud.wireless.dataset import load
from edgecloud.wireless.model import CONFIGS, WirelessEncoder
from edgecloud.wireless.tasks import (
    ProbeConfig,
    copy_last_nmse_db,
    embeddings,
    evaluate_end_to_end,
    evaluate_head,
    fit_end_to_end,
    fit_head,
    fit_predictor_end_to_end,
    fit_predictor_frozen,
    labels,
    prediction_nmse_db,
    recall_at_1,
    validation_score,
)

REV2 = ProbeConfig(max_steps=200)  # the second revision: 4 epochs at 100%, no warm-up, last step


def _probe(recipe: str, seed: int) -> ProbeConfig:
    return replace(PROBE if recipe == "rev4" else REV2, seed=seed)


def _bench_config(args: argparse.Namespace, recipe: str = "rev4") -> BenchConfig:
    probe = _probe(recipe, args.seed)
    if getattr(args, "smoke", False):  # a few steps on tiny data, to check the script runs
        probe = replace(probe, min_steps=2, max_steps=2, batch_size=4, evaluations=2)
    train, test, unseen, validation = args.splits
    return BenchConfig(
        train_scenes=train,
        test_scenes=test,
        unseen_scenes=unseen,
        validation_scenes=validation,
        seed=args.seed,
        probe=probe,
    )


def fit(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(1)
    config = _bench_config(args, args.recipe)
    probe = config.probe
    if args.lrs:
        probe = replace(probe, encoder_lrs=tuple(args.lrs))
    data = load(Path(args.data))
    splits = Splits.of(data, config)
    use_validation = args.recipe == "rev4"
    val = splits.validation if use_validation else None
    model_config = CONFIGS[config.model]
    model = load_pretrained(Path(args.checkpoint), config)[0] if args.family != "task_specific" else None
    out: dict[str, list] = {k: [] for k in ("tasks", "fit_on_labelled_rows", "generalisation", "selection", "curves")}
    timings: dict[str, float] = {}
    task, family = args.task, args.family
    curve: list[dict[str, float]] = []
    recording = False

    def record(fraction: float, metrics: dict[str, float], key: str, name: str = family) -> None:
        out[key].extend(metric_rows(task, fraction, name, metrics, args.seed))

    if task != "predict":
        tokens = frozen_split_tokens(model, data, splits) if family == "wmlm" else None
        features = {k: WirelessEncoder.features(t) for k, t in tokens.items()} if tokens else None
        position_in_train = {int(r): i for i, r in enumerate(splits.train)}
    if args.curves and task != "predict":
        # Diagnostic only: at every validation check inside a fit, also score the test split. The
        # fit's own validate() still reads (and selects on) the validation rows alone.
        import edgecloud.wireless.tasks as tasks_module

        original_e2e, original_head = tasks_module.evaluate_end_to_end, tasks_module.evaluate_head
        test_y = labels(data, splits.test, task)

        def spy_e2e(model_, data_, rows_, task_):  # type: ignore[no-untyped-def]
            metrics = original_e2e(model_, data_, rows_, task_)
            if not recording:
                return metrics
            test = original_e2e(model_, data_, splits.test, task_)
            curve.append({"validation": validation_score(task_, metrics), "test": validation_score(task_, test)})
            print("check", len(curve), curve[-1], time.strftime("%H:%M:%S"), flush=True)
            return metrics

        def spy_head(head_, x_, y_, task_):  # type: ignore[no-untyped-def]
            metrics = original_head(head_, x_, y_, task_)
            if not recording:
                return metrics
            test = original_head(head_, features["test"], test_y, task_)
            curve.append({"validation": validation_score(task_, metrics), "test": validation_score(task_, test)})
            print("check", len(curve), curve[-1], time.strftime("%H:%M:%S"), flush=True)
            return metrics

        tasks_module.evaluate_end_to_end, tasks_module.evaluate_head = spy_e2e, spy_head
    for fraction in args.fractions:
        labelled = splits.labelled(fraction, args.seed)
        curve.clear()
        recording = fraction == max(args.fractions)  # curves at the largest fraction only (cost)
        started = time.perf_counter()
        if task == "predict":
            if family == "wmlm":
                fitted = fit_predictor_frozen(load_copy(model), data, labelled, probe, val)
            else:
                pretrained = model if family == "wmlm_finetuned" else None
                fitted = fit_predictor_end_to_end(data, labelled, model_config, probe, pretrained, val)
            timings[f"predict {fraction:.0%} {family}"] = time.perf_counter() - started
            record(fraction, {"nmse_db": prediction_nmse_db(fitted, data, splits.test)}, "tasks")
            if fraction == 1.0:
                record(fraction, {"nmse_db": prediction_nmse_db(fitted, data, splits.unseen)}, "generalisation")
        elif family == "wmlm":
            idx = torch.tensor([position_in_train[int(r)] for r in labelled])
            train_y = labels(data, labelled, task)
            head_val = (features["validation"], labels(data, val, task)) if use_validation else None
            fitted = fit_head(features["train"][idx], train_y, task, probe, validation=head_val)
            timings[f"{task} {fraction:.0%} wmlm head"] = time.perf_counter() - started
            for key, x, rows in (
                ("tasks", features["test"], splits.test),
                ("fit_on_labelled_rows", features["train"][idx], labelled),
            ):
                record(fraction, evaluate_head(fitted, x, labels(data, rows, task), task), key)
            if fraction == 1.0:
                record(
                    fraction,
                    evaluate_head(fitted, features["unseen"], labels(data, splits.unseen, task), task),
                    "generalisation",
                )
        else:
            pretrained = model.wireless if family == "wmlm_finetuned" else None
            fitted = fit_end_to_end(data, labelled, task, model_config, probe, pretrained, val)
            timings[f"{task} {fraction:.0%} {family}"] = time.perf_counter() - started
            record(fraction, evaluate_end_to_end(fitted, data, splits.test, task), "tasks")
            record(fraction, evaluate_end_to_end(fitted, data, labelled, task), "fit_on_labelled_rows")
            if fraction == 1.0:
                record(fraction, evaluate_end_to_end(fitted, data, splits.unseen, task), "generalisation")
        choice = getattr(fitted, "selection", {})
        out["selection"].append(
            {"task": task, "label_fraction": fraction, "model": family, "seed": args.seed, **choice}
        )
        print(json.dumps(out["tasks"][-1]), choice, flush=True)
        if curve:
            checks = list(curve)
            out["curves"].append(
                {
                    "task": task,
                    "label_fraction": fraction,
                    "model": family,
                    "seed": args.seed,
                    "encoder_lrs": list(probe.encoder_lrs),  # checks: evaluations per rate, in this order
                    "checks": checks,
                }
            )
        # written after every fraction: a run cut short keeps what it finished
        result = {
            **out,
            "timings_s": timings,
            "recipe": args.recipe,
            "probe": asdict(probe),
            "machine": machine_description(1),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def retrieval(args: argparse.Namespace) -> dict[str, object]:
    torch.set_num_threads(1)
    config = _bench_config(args)
    data = load(Path(args.data))
    splits = Splits.of(data, config)
    model, meta = load_pretrained(Path(args.checkpoint), config)
    chance = 1.0 / len(splits.test)
    anchored = embeddings(model, data, splits.test, ["wireless", "image", "lidar", "text"])
    pairs = (
        ("wireless", "image"),
        ("wireless", "lidar"),
        ("wireless", "text"),
        ("image", "text"),
        ("text", "image"),
        ("lidar", "text"),
        ("image", "lidar"),
    )
    rows = [
        {
            "pair": f"{a}->{b}",
            "model": "wmlm",
            "recall_at_1": recall_at_1(anchored[a], anchored[b]),
            "chance": chance,
            "trained_together": "wireless" in (a, b),
            "seed": args.seed,
        }
        for a, b in pairs
    ]
    model_config = CONFIGS[config.model]
    reference = {
        "copy_last_nmse_db": {
            "test": copy_last_nmse_db(data, splits.test, model_config),
            "unseen": copy_last_nmse_db(data, splits.unseen, model_config),
        },
        "pretrained_decoder_nmse_db": prediction_nmse_db(model, data, splits.test),
    }
    return {
        "retrieval": rows,
        "reference": reference,
        "pretraining": {"final_losses": (meta.get("log") or [None])[-1]},
        "timings_s": {"pretrain wmlm (anchored)": float(meta.get("train_s", float("nan")))},
    }


SENSING = ("los", "position", "beam")


def combine(args: argparse.Namespace) -> None:
    """Per-seed report from pieces: the rev4 fits' rows as the bench writes them; the rev2
    reproductions (``--recipe rev2``) under ``rev2_recipe``, the curves under ``curves``."""
    config = _bench_config(args)
    keys = ("tasks", "retrieval", "generalisation", "fit_on_labelled_rows", "diagnostics", "selection")
    report: dict[str, object] = {
        "complete": False,
        **{k: [] for k in keys},
        "rev2_recipe": [],
        "curves": [],
        "reference": {},
        "timings_s": {},
        "config": {"bench": asdict(config), "model": CONFIGS[config.model].to_json()},
        "splits": dict(zip(("train", "test", "unseen", "validation"), args.splits, strict=True))
        | {"train_layout": "main", "unseen_layout": "narrow"},
        "pieces": [],
    }
    pieces = [json.loads(Path(name).read_text()) for name in args.pieces]
    grid = list(PROBE.encoder_lrs)
    # An end-to-end family's learning-rate grid may have run as one piece per rate: keep, per (task,
    # fraction, family), the piece with the best validation score, the first rate of the grid on a
    # tie -- what ``_best_over_lrs`` does inside one process.
    best: dict[tuple, tuple[int, dict, int]] = {}
    for k, piece in enumerate(pieces):
        if piece.get("recipe") == "rev2":
            continue
        for choice in piece.get("selection", []):
            key = (choice["task"], choice["label_fraction"], choice["model"])
            order = grid.index(choice["lr"]) if choice["lr"] in grid else 0
            held = best.get(key)
            if held is None or (choice["score"], -order) > (held[1]["score"], -held[2]):
                best[key] = (k, choice, order)
    tried: dict[tuple, list] = {}
    for piece in pieces:
        for choice in piece.get("selection", []) if piece.get("recipe") != "rev2" else []:
            key = (choice["task"], choice["label_fraction"], choice["model"])
            tried.setdefault(key, []).extend(choice.get("tried", [{k: choice[k] for k in ("lr", "step", "score")}]))

    def kept(k: int, row: dict) -> bool:
        key = (row.get("task"), row.get("label_fraction"), row.get("model"))
        return key not in best or best[key][0] == k

    for k, (name, piece) in enumerate(zip(args.pieces, pieces, strict=True)):
        if piece.get("recipe") == "rev2":
            report["rev2_recipe"].extend(piece["tasks"])  # type: ignore[union-attr]
            continue
        for key in keys:
            rows = [r for r in piece.get(key, []) if r.get("seed", args.seed) == args.seed and kept(k, r)]
            if key == "selection":
                rows = [{**r, "tried": tried[(r["task"], r["label_fraction"], r["model"])]} for r in rows]
            report[key].extend(rows)  # type: ignore[union-attr]
        report["curves"].extend(piece.get("curves", []))  # type: ignore[union-attr]
        report["reference"].update(piece.get("reference", {}))  # type: ignore[union-attr]
        for label, seconds in piece.get("timings_s", {}).items():
            report["timings_s"][f"{label} [{Path(name).stem}]"] = seconds  # type: ignore[index]
        if "pretraining" in piece:
            report["pretraining"] = piece["pretraining"]
        report["pieces"].append({"file": Path(name).name, "machine": piece.get("machine")})  # type: ignore[union-attr]
    have = {(r["task"], r["label_fraction"], r["model"]) for r in report["tasks"]}  # type: ignore[union-attr]
    want = {(t, f, m) for t in SENSING for f in config.fractions for m in ("wmlm", "wmlm_finetuned", "task_specific")}
    report["missing"] = sorted(map(list, want - have)) + (
        [["predict", "all", "all"]] if not any(t == "predict" for t, _, _ in have) else []
    )
    report["complete"] = not report["missing"] and bool(report["retrieval"])
    write_json(report, Path(args.out))
    print(f"{args.out}: {len(report['tasks'])} task rows, missing {report['missing']}")  # type: ignore[arg-type]


def merge(args: argparse.Namespace) -> None:
    """The bench's ``merge_reports`` over per-seed reports, keeping the rev2 rows and curves."""
    from edgecloud.wireless.bench import merge_reports, plot

    reports = [json.loads(Path(name).read_text()) for name in args.reports]
    merged = merge_reports(reports)
    for key in ("rev2_recipe", "curves"):
        merged[key] = [row for r in reports for row in r.get(key, [])]
    merged["missing"] = {r["config"]["bench"]["seed"]: r.get("missing") for r in reports}
    write_json(merged, Path(args.out))
    if args.plot:
        plot(merged, Path(args.plot))
    print(f"{args.out}: seeds {merged['seeds']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    for verb in ("fit", "retrieval"):
        p = verbs.add_parser(verb)
        p.add_argument("--data", required=True)
        p.add_argument("--checkpoint", default="")
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--out", required=True)
        p.add_argument(
            "--splits", type=int, nargs=4, default=[3200, 800, 800, 320], help="train test unseen validation"
        )
        p.add_argument("--smoke", action="store_true", help="2 steps per fit (checks the script on tiny data)")
        if verb != "retrieval":
            p.add_argument("--task", choices=("los", "position", "beam", "predict"), required=True)
            p.add_argument("--family", choices=("wmlm", "wmlm_finetuned", "task_specific"), required=True)
            p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1, 0.01])
            p.add_argument("--lrs", type=float, nargs="+")
            p.add_argument("--recipe", choices=("rev4", "rev2"), default="rev4")
            p.add_argument("--curves", action="store_true", help="also record the test metrics at every check")
    c = verbs.add_parser("combine")
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--splits", type=int, nargs=4, default=[3200, 800, 800, 320], help="train test unseen validation")
    c.add_argument("pieces", nargs="+")
    m = verbs.add_parser("merge")
    m.add_argument("--out", required=True)
    m.add_argument("--plot")
    m.add_argument("reports", nargs="+")
    args = parser.parse_args()
    if args.verb == "combine":
        combine(args)
        return
    if args.verb == "merge":
        merge(args)
        return
    result = {"fit": fit, "retrieval": retrieval}[args.verb](args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
