"""``edgecloud wireless data|pretrain|bench``: WMLM from the command line."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _progress(total: int, label: str):  # type: ignore[no-untyped-def]
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()
    )
    return progress, progress.add_task(label, total=total)


def _data(args: argparse.Namespace) -> int:
    from edgecloud.wireless.dataset import generate

    scenes = {"main": args.scenes}
    unseen = args.scenes // 5 if args.unseen_scenes is None else args.unseen_scenes
    if unseen:
        scenes["narrow"] = unseen
    progress, task = _progress(sum(scenes.values()), "generating scenes")
    started = time.perf_counter()
    with progress:
        manifest = generate(
            Path(args.out),
            scenes,
            seed=args.seed,
            shard_size=args.shard_size,
            workers=args.workers,
            on_progress=lambda n: progress.advance(task, n),
        )
    elapsed = time.perf_counter() - started
    for layout, stats in manifest["stats"].items():
        print(f"{layout}: {stats['scenes']} scenes, LoS share {stats['los_share']:.2f}")
    print(f"{len(manifest['shards'])} shards + manifest.json in {args.out} ({elapsed:.1f} s)")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from edgecloud.wireless.dataset import load
    from edgecloud.wireless.model import CONFIGS
    from edgecloud.wireless.train import TrainConfig, pretrain, save_checkpoint

    torch.set_num_threads(args.threads)
    data = load(Path(args.data), ["main"])
    rows = np.flatnonzero(data.indices < args.train_scenes) if args.train_scenes else np.arange(len(data))
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    progress, task = _progress(config.steps, "pretraining")
    started = time.perf_counter()
    with progress:

        def on_step(step: int, losses: dict[str, float]) -> None:
            progress.update(task, completed=step + 1, description=f"pretraining (loss {losses['total']:.3f})")

        model, log = pretrain(data, rows, CONFIGS[args.config], config, device=args.device, on_step=on_step)
    elapsed = time.perf_counter() - started
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        save_checkpoint(model, Path(args.out), {"log": log[-1:], "train_s": elapsed, "train_rows": len(rows)})
        print(
            f"trained {config.steps} steps on {len(rows)} scenes in {elapsed:.0f} s; final losses "
            + json.dumps({k: round(v, 4) for k, v in log[-1].items() if k not in ("step", "elapsed_s")})
        )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import torch

    from edgecloud.wireless.bench import (
        PROBE,
        BenchConfig,
        merge_reports,
        plot,
        run_bench,
        write_json,
    )
    from edgecloud.wireless.dataset import generate, read_manifest
    from edgecloud.wireless.train import TrainConfig

    if args.merge:
        reports = []
        for name in args.merge:
            try:
                reports.append(json.loads(Path(name).read_text()))
            except (OSError, json.JSONDecodeError) as error:
                raise SystemExit(f"--merge {name}: cannot read a bench report ({error})") from error
        try:
            report = merge_reports(reports)
        except (KeyError, ValueError) as error:
            raise SystemExit(f"--merge: {error}") from error
        _print_bench(report)
        if args.json:
            write_json(report, Path(args.json))
        if args.plot:
            plot(report, Path(args.plot))
        return 0
    torch.set_num_threads(args.threads)
    config = BenchConfig(
        train_scenes=args.train_scenes,
        test_scenes=args.test_scenes,
        unseen_scenes=args.unseen_scenes,
        validation_scenes=args.validation_scenes,
        model=args.config,
        pretrain=TrainConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed),
        probe=replace(
            PROBE,
            seed=args.seed,
            max_steps=args.probe_max_steps,
            encoder_lrs=tuple(args.encoder_lrs) if args.encoder_lrs else PROBE.encoder_lrs,
        ),
        seed=args.seed,
        skip=tuple(args.skip),
    )
    data_dir = Path(args.data)
    try:
        read_manifest(data_dir)
    except FileNotFoundError:
        main = config.train_scenes + config.test_scenes + config.validation_scenes
        progress, task = _progress(main + config.unseen_scenes, "generating scenes")
        with progress:
            generate(
                data_dir,
                {"main": main, "narrow": config.unseen_scenes},
                seed=args.seed,
                workers=args.workers,
                on_progress=lambda n: progress.advance(task, n),
            )
    try:
        report = run_bench(
            data_dir,
            config,
            Path(args.checkpoint) if args.checkpoint else None,
            on_stage=lambda label: print(f"[{time.strftime('%H:%M:%S')}] {label}", flush=True),
            # a long run on a busy machine leaves what it has finished (marked "complete": false)
            on_partial=(lambda partial: write_json(partial, Path(args.json))) if args.json else None,
        )
    except ValueError as error:  # data too small for the splits, a checkpoint of another protocol
        raise SystemExit(f"wireless bench: {error}") from error
    _print_bench(report)
    print(
        f"wall {report['wall_s']:.0f} s; load {report['machine_before']['loadavg']} -> "
        f"{report['machine_after']['loadavg']}"
    )
    if args.json:
        write_json(report, Path(args.json))
    if args.plot:
        plot(report, Path(args.plot))
    return 0


def _print_bench(report: dict[str, object]) -> None:
    from edgecloud.wireless.bench import retrieval_summary, summary

    print(
        f"{'task':9s} {'labels':>6s} {'metric':13s} {'model':15s} {'value':>9s} {'task-spec':>9s} "
        f"{'better by (min..max over seeds)':>32s}"
    )
    for row in summary(report):
        print(
            f"{row['task']:9s} {row['label_fraction']:6.0%} {row['metric']:13s} {row['model']:15s} "
            f"{row['value']:9.3f} {row['task_specific']:9.3f} {row['wmlm_better_by']:+9.3f} "
            f"({row['better_by_min']:+.3f}..{row['better_by_max']:+.3f}, {len(row['seeds'])} seeds)"
        )
    for row in retrieval_summary(report):
        print(
            f"retrieval {row['pair']:16s} {row['model']:27s} recall@1 {row['recall_at_1']:.4f} "
            f"({row['times_chance']:.1f}x chance; {row['recall_min']:.4f}..{row['recall_max']:.4f})"
        )


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    del bench  # the issue names the benchmark `edgecloud wireless bench`
    parser = commands.add_parser("wireless", help="WMLM: wireless-anchored multimodal model (data, pretrain, bench)")
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>")
    verbs.required = True

    data = verbs.add_parser("data", help="generate street scenes: channel, beam, position, LoS, image, LiDAR, text")
    data.add_argument("--scenes", type=_positive_int, required=True, help="scenes on the training layout (main)")
    data.add_argument(
        "--unseen-scenes",
        type=_non_negative_int,
        default=None,
        help="scenes on the held-out layout (narrow); default scenes/5",
    )
    data.add_argument("--out", required=True, help="directory for the shards and manifest.json")
    data.add_argument("--seed", type=int, default=0)
    data.add_argument("--shard-size", type=_positive_int, default=250)
    data.add_argument("--workers", type=_positive_int, default=1, help="processes making shards in parallel")
    data.set_defaults(handler=_data)

    train = verbs.add_parser("pretrain", help="wireless-anchored contrastive + next-snapshot pretraining")
    train.add_argument("--data", required=True)
    train.add_argument("--out", required=True, help="checkpoint directory")
    train.add_argument("--config", choices=("cpu", "gpu"), default="cpu")
    train.add_argument("--steps", type=_positive_int, default=400)
    train.add_argument("--batch-size", type=_positive_int, default=128)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument(
        "--train-scenes",
        type=_non_negative_int,
        default=3200,
        help="use main-layout scenes with index below this (0: all)",
    )
    train.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        help="torch threads (1: two OpenMP threads spin on a loaded machine)",
    )
    train.add_argument("--device", default="cpu")
    train.add_argument("--seed", type=int, default=0)
    train.set_defaults(handler=_pretrain)

    run = verbs.add_parser(
        "bench", help="WMLM (frozen + light heads) vs task-specific models, retrieval, unseen layout"
    )
    run.add_argument("--data", default="wmlm-data", help="data directory (generated there when missing)")
    run.add_argument("--checkpoint", help="pretrained WMLM to use (trained and saved there when missing)")
    run.add_argument("--config", choices=("cpu", "gpu"), default="cpu")
    run.add_argument("--steps", type=_positive_int, default=400, help="pretraining steps (anchored and ablation)")
    run.add_argument("--batch-size", type=_positive_int, default=128, help="pretraining batch (contrastive negatives)")
    run.add_argument(
        "--probe-max-steps", type=_positive_int, default=1500, help="cap on a fit's steps (30 epochs of 3,200: 1500)"
    )
    run.add_argument("--train-scenes", type=_positive_int, default=3200)
    run.add_argument("--test-scenes", type=_positive_int, default=800)
    run.add_argument("--unseen-scenes", type=_positive_int, default=800)
    run.add_argument(
        "--validation-scenes",
        type=_non_negative_int,
        default=320,
        help="main-layout scenes after the test ones, for choosing each fit's step and learning rate (0: none)",
    )
    run.add_argument(
        "--encoder-lrs",
        type=float,
        nargs="+",
        help="encoder learning rates each end-to-end family tries (chosen on validation)",
    )
    run.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=("attentive", "diagnostics", "predict", "ablation"),
        help="stages to leave out",
    )
    run.add_argument("--threads", type=_positive_int, default=1)
    run.add_argument("--workers", type=_positive_int, default=1)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--json", help="write the report here")
    run.add_argument("--plot", help="write a PNG of the results here")
    run.add_argument(
        "--merge",
        nargs="+",
        metavar="REPORT",
        help="combine bench JSON reports of other seeds (same configuration) into one; runs nothing",
    )
    run.set_defaults(handler=_bench)
