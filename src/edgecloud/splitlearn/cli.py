"""``edgecloud splitlearn train|plan|bench``: C2P2SL split learning from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _ues(text: str) -> tuple[Any, ...]:
    """``slowdown:snr_db,...`` -> UE configs."""
    from edgecloud.splitlearn.latency import UEConfig

    ues = []
    for item in text.split(","):
        try:
            slowdown, snr = item.split(":")
            ues.append(UEConfig(slowdown=float(slowdown), snr_db=float(snr)))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"--ues: expected slowdown:snr_db[,...] with slowdown >= 1, got {item!r} ({exc})"
            ) from exc
    return tuple(ues)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn")
    parser.add_argument(
        "--ues",
        type=_ues,
        default=None,
        help="UEs as slowdown:snr_db[,...] (default: 20:5,10:15,40:20,20:10)",
    )
    parser.add_argument("--batch", type=_positive_int, default=16, help="samples per UE per round")
    parser.add_argument("--max-micro-batches", type=_positive_int, default=8)
    parser.add_argument("--seed", type=int, default=0)


def _scenario(args: argparse.Namespace, bandwidth_mhz: float) -> Any:
    import torch

    from edgecloud.splitlearn.bench import DEFAULT_UES
    from edgecloud.splitlearn.data import load_digits_split, rounds_per_epoch
    from edgecloud.splitlearn.latency import Scenario
    from edgecloud.splitlearn.models import DIGITS_SHAPE, build_model
    from edgecloud.splitlearn.profiling import calibrate, profile_model
    from edgecloud.splitlearn.transport import measure_message_latency

    torch.set_num_threads(1)
    model = build_model(args.model, args.seed)
    profile = profile_model(model, DIGITS_SHAPE)
    ues = args.ues or DEFAULT_UES
    per_epoch = rounds_per_epoch(len(load_digits_split(args.seed).train), len(ues), args.batch)
    speed = calibrate(model, profile, DIGITS_SHAPE)
    return Scenario(
        profile, speed, ues, args.batch, bandwidth_mhz * 1e6, per_epoch, measure_message_latency()
    )


def _describe(plan: Any) -> str:
    shares = ", ".join(f"{b:.3f}" for b in plan.uplink_shares)
    return f"cut={plan.cut} micro_batches={list(plan.micro_batches)} uplink_shares=[{shares}]"


def _plan(args: argparse.Namespace) -> int:
    from edgecloud.splitlearn.bench import plans_for
    from edgecloud.splitlearn.latency import round_time_bound, simulate

    scenario = _scenario(args, args.bandwidth_mhz)
    per_epoch = scenario.rounds_per_epoch
    print(
        f"{args.model}, {scenario.num_ues} UEs, {args.bandwidth_mhz:g} MHz, batch {args.batch}/UE, "
        f"{per_epoch} rounds/epoch, measured message latency {scenario.message_latency_s * 1e3:.2f} ms"
    )
    for name, plan in plans_for(scenario, args.max_micro_batches).items():
        round_s = simulate(scenario, plan, per_epoch, per_epoch).total_s / per_epoch
        bound = f" bound={round_time_bound(scenario, plan) * 1e3:.1f} ms" if plan.schedule == "c2p2sl" else ""
        print(f"  {name:17s} {_describe(plan)}  predicted {round_s * 1e3:.1f} ms/round{bound}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from edgecloud.splitlearn.bench import plans_for
    from edgecloud.splitlearn.latency import simulate
    from edgecloud.splitlearn.runtime import TrainConfig, train

    scenario = _scenario(args, args.bandwidth_mhz)
    plan = plans_for(scenario, args.max_micro_batches)[args.schedule]
    per_epoch = scenario.rounds_per_epoch
    predicted = simulate(scenario, plan, per_epoch * args.epochs, per_epoch).total_s
    print(f"{args.schedule}: {_describe(plan)}; predicted {predicted:.2f} s")
    result = train(
        TrainConfig(
            model=args.model,
            plan=plan,
            ues=scenario.ues,
            bandwidth_hz=args.bandwidth_mhz * 1e6,
            batch_per_ue=args.batch,
            epochs=args.epochs,
            seed=args.seed,
        )
    )
    for event in result.events:
        print(f"  event: {event}")
    print(
        f"trained {len(result.round_end_s)} rounds in {result.time_s:.2f} s (predicted {predicted:.2f} s), "
        f"test accuracy {result.accuracy:.4f}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "schedule": args.schedule,
                    "time_s": result.time_s,
                    "predicted_s": predicted,
                    "accuracy": result.accuracy,
                    "participants": result.participants,
                    "events": result.events,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from edgecloud.splitlearn.bench import (
        DEFAULT_UES,
        SCHEMES,
        BenchConfig,
        plot,
        run_bench,
        summarise,
        write_json,
    )

    config = BenchConfig(
        model=args.model,
        bandwidths_mhz=tuple(args.bandwidths),
        ues=args.ues or DEFAULT_UES,
        batch_per_ue=args.batch,
        epochs=args.epochs,
        max_micro_batches=args.max_micro_batches,
        seed=args.seed,
    )
    total = len(config.bandwidths_mhz) * len(SCHEMES) + 1  # + the pilot run
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    ) as progress:
        task = progress.add_task("calibrating", total=total)
        started = [0]

        def on_run(label: str) -> None:
            progress.update(task, description=label, completed=started[0])
            started[0] += 1

        report = run_bench(config, on_run)
        progress.update(task, description="done", completed=total)
    print(
        f"measured message latency {report.message_latency_s * 1e3:.2f} ms; UE CPU in a live run "
        f"{report.ue_cpu_inflation:.2f}x the isolated calibration; machine {report.machine}"
    )
    print(f"{'MHz':>5} {'scheme':17s} {'time_s':>8} {'pred_s':>8} {'err':>6} {'acc':>7}  plan")
    for row in report.rows:
        for scheme in SCHEMES:
            r = row[scheme]
            print(
                f"{row['bandwidth_mhz']:>5g} {scheme:17s} {r['time_s']:8.2f} {r['predicted_s']:8.2f} "
                f"{r['prediction_error']:+6.1%} {r['accuracy']:7.4f}  cut={r['cut']} m={r['micro_batches']}"
            )
    for s in summarise(report.rows):
        print(
            f"{s['bandwidth_mhz']:g} MHz: C2P2SL saves {s['c2p2sl_time_saved']:.1%} vs sequential "
            f"(mid cut: {s['fixed_cut_time_saved']:.1%}), accuracy {s['c2p2sl_accuracy_delta_pp']:+.2f} pp, "
            f"worst prediction error {s['max_abs_prediction_error']:.1%}"
        )
    if args.json:
        write_json(report, Path(args.json))
    if args.plot:
        plot(report, Path(args.plot), config)
    return 0


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    del bench  # the issue names the benchmark `edgecloud splitlearn bench`
    parser = commands.add_parser("splitlearn", help="C2P2SL: pipelined split learning over wireless links")
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>")
    verbs.required = True

    train = verbs.add_parser("train", help="train with UE and BS processes over gloo on loopback")
    _common(train)
    train.add_argument("--schedule", choices=("sequential", "c2p2sl", "c2p2sl_fixed_cut"), default="c2p2sl")
    train.add_argument("--bandwidth-mhz", type=_positive_float, default=2.0)
    train.add_argument("--epochs", type=_positive_int, default=3)
    train.add_argument("--json", help="write the run's result here")
    train.set_defaults(handler=_train)

    plan = verbs.add_parser("plan", help="print the optimiser's choice and predicted times")
    _common(plan)
    plan.add_argument("--bandwidth-mhz", type=_positive_float, default=2.0)
    plan.set_defaults(handler=_plan)

    run = verbs.add_parser("bench", help="sequential vs C2P2SL (optimised, mid cut) across bandwidths")
    _common(run)
    run.add_argument("--bandwidths", type=_positive_float, nargs="+", default=[1.0, 2.0, 5.0], metavar="MHZ")
    run.add_argument("--epochs", type=_positive_int, default=3)
    run.add_argument("--json", help="write the results (list of rows) here")
    run.add_argument("--plot", help="write a PNG of time per round vs bandwidth here")
    run.set_defaults(handler=_bench)
