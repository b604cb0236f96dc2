"""``edgecloud splitlearn train|plan|bench|node``: C2P2SL split learning from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DATASET_CHOICES = ("mnist", "digits")
HELP = argparse.ArgumentDefaultsHelpFormatter
# Options whose default depends on --dataset say so themselves; "%(default).0s" prints nothing and
# tells ArgumentDefaultsHelpFormatter not to append "(default: None)".
PER_DATASET = "%(default).0s"


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
    try:
        value = int(text)
    except ValueError:
        value = 0
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


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"expected an accuracy in (0, 1], got {text}")
    return value


def describe_ues(ues: tuple[Any, ...]) -> str:
    return ", ".join(f"UE{k} {u.slowdown:g}x slower at {u.snr_db:g} dB" for k, u in enumerate(ues))


def describe_plan(plan: Any) -> str:
    micro = ", ".join(str(m) for m in plan.micro_batches)
    shares = ", ".join(f"{b:.3f}" for b in plan.uplink_shares)
    return f"cut {plan.cut}, micro-batches {micro}, uplink shares {shares}"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", choices=DATASET_CHOICES, default="mnist", help="training data (both ship offline)")
    parser.add_argument("--model", choices=("cnn", "mlp"), default="cnn", help="network to split")
    parser.add_argument(
        "--ues",
        type=_ues,
        default=None,
        help="UEs as slowdown:snr_db[,...] (default: mnist 5:5,2.5:15,10:20,5:10; "
        "digits 20:5,10:15,40:20,20:10)" + PER_DATASET,
    )
    parser.add_argument(
        "--batch",
        type=_positive_int,
        default=None,
        help="samples per UE per round (default: 32 on mnist, 16 on digits)" + PER_DATASET,
    )
    parser.add_argument("--max-micro-batches", type=_positive_int, default=8, help="optimiser's limit per UE")
    parser.add_argument(
        "--syncs-per-epoch",
        type=_positive_int,
        default=4,
        help="client-model averagings per epoch, each followed by a test evaluation",
    )
    parser.add_argument("--seed", type=int, default=0, help="data shuffle and initial weights")


def _defaults(args: argparse.Namespace) -> tuple[tuple[Any, ...], int]:
    from edgecloud.splitlearn.bench import DEFAULT_BATCH, DEFAULT_UES

    return args.ues or DEFAULT_UES[args.dataset], args.batch or DEFAULT_BATCH[args.dataset]


@contextmanager
def _step(label: str) -> Iterator[None]:
    print(f"{label} ...", end=" ", flush=True)
    started = time.monotonic()
    yield
    print(f"done in {time.monotonic() - started:.1f} s", flush=True)


def _settings(args: argparse.Namespace, bandwidths: str) -> Any:
    """Print the run's settings as lines, then measure the host; returns the host model."""
    from edgecloud.splitlearn.bench import measure_host
    from edgecloud.splitlearn.data import dataset_spec

    ues, batch = _defaults(args)
    print(f"data: {dataset_spec(args.dataset).description}")
    print(f"model: {args.model}; {len(ues)} UEs: {describe_ues(ues)}")
    print(f"uplink band: {bandwidths}; {batch} samples per UE per round; seed {args.seed}")
    with _step("profiling the model, calibrating this host (1 torch thread) and measuring message latency"):
        host = measure_host(args.dataset, args.model, args.seed)
    print(f"message latency {host.message_latency_s * 1e3:.2f} ms, late receive {host.late_receive_s * 1e3:.2f} ms")
    return host


def _plan(args: argparse.Namespace) -> int:
    from edgecloud.splitlearn.bench import plans_for, scenario_for
    from edgecloud.splitlearn.latency import round_time_bound, simulate

    ues, batch = _defaults(args)
    host = _settings(args, f"{args.bandwidth_mhz:g} MHz")
    scenario = scenario_for(host, ues, batch, args.bandwidth_mhz, args.syncs_per_epoch)
    period = scenario.rounds_per_sync
    print(f"averaging every {period} rounds")
    for name, plan in plans_for(scenario, args.max_micro_batches).items():
        round_s = simulate(scenario, plan, period, period).total_s / period
        bound = f", bound {round_time_bound(scenario, plan) * 1e3:.1f} ms" if plan.schedule == "c2p2sl" else ""
        print(f"  {name:17s} {describe_plan(plan)}: predicted {round_s * 1e3:.1f} ms per round{bound}")
    return 0


def _progress_bar(total: int, label: str) -> tuple[Any, Callable[[Any], None]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rounds"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[accuracy]}"),
    )
    task = bar.add_task(label, total=total, accuracy="")

    def update(progress: Any) -> None:
        fields = {}
        if progress.accuracy is not None:
            fields["accuracy"] = f"test accuracy {100 * progress.accuracy:.2f}% at {progress.time_s:.1f} s"
        bar.update(task, completed=progress.rounds_done, total=progress.rounds, **fields)

    return bar, update


def train_config(args: argparse.Namespace, plan: Any, max_rounds: int | None = None) -> Any:
    """The run ``train`` and ``node`` start: the options, the plan, a cosine learning-rate decay."""
    from edgecloud.splitlearn.runtime import TrainConfig

    ues, batch = _defaults(args)
    return TrainConfig(
        model=args.model,
        plan=plan,
        ues=ues,
        bandwidth_hz=args.bandwidth_mhz * 1e6,
        batch_per_ue=batch,
        epochs=args.epochs,
        max_rounds=max_rounds,
        seed=args.seed,
        dataset=args.dataset,
        syncs_per_epoch=args.syncs_per_epoch,
        lr_schedule="cosine",
    )


def _train(args: argparse.Namespace) -> int:
    from edgecloud.splitlearn.bench import plans_for, scenario_for
    from edgecloud.splitlearn.latency import simulate
    from edgecloud.splitlearn.runtime import train

    ues, batch = _defaults(args)
    host = _settings(args, f"{args.bandwidth_mhz:g} MHz")
    scenario = scenario_for(host, ues, batch, args.bandwidth_mhz, args.syncs_per_epoch)
    plan = plans_for(scenario, args.max_micro_batches)[args.schedule]
    per_sync = scenario.rounds_per_sync
    rounds = host.train_size // len(ues) // batch * args.epochs
    prediction = simulate(scenario, plan, rounds, per_sync)
    print(f"schedule {args.schedule}: {describe_plan(plan)}")
    print(
        f"{rounds} rounds ({args.epochs} epoch{'s' if args.epochs > 1 else ''}), averaging and test every "
        f"{per_sync} rounds; predicted training time {prediction.total_s:.1f} s"
    )
    print(f"starting the BS and {len(ues)} UE processes (gloo on loopback) ...", flush=True)
    bar, update = _progress_bar(rounds, args.schedule)
    with bar:
        result = train(
            train_config(args, plan),
            timeout_s=max(900.0, 20 * prediction.total_s),
            on_progress=update,
        )
    for event in result.events:
        print(f"  event: {event}")
    error = (prediction.total_s - result.time_s) / result.time_s
    print(
        f"trained {len(result.round_end_s)} rounds in {result.time_s:.1f} s (predicted {prediction.total_s:.1f} s, "
        f"{error:+.1%}); final test accuracy {100 * result.accuracy:.2f}%"
    )
    reached = result.time_to(args.target_accuracy)
    if reached is None:
        print(f"target {100 * args.target_accuracy:g}% not reached")
    else:
        target = f"{100 * args.target_accuracy:g}%"
        print(f"target {target} first reached after round {reached.round}, at {reached.time_s:.1f} s")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "schedule": args.schedule,
                    "dataset": args.dataset,
                    "time_s": result.time_s,
                    "predicted_s": prediction.total_s,
                    "accuracy": result.accuracy,
                    "time_to_target_s": reached.time_s if reached else None,
                    "rounds_to_target": reached.round if reached else None,
                    "target_accuracy": args.target_accuracy,
                    "evaluations": [[e.round, e.time_s, e.accuracy] for e in result.evaluations],
                    "participants": result.participants,
                    "events": result.events,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgecloud.splitlearn.bench import (
        BenchConfig,
        describe_machine,
        plot,
        report_json,
        run_bench,
        summarise,
        write_json,
    )

    ues, batch = _defaults(args)
    config = BenchConfig(
        dataset=args.dataset,
        model=args.model,
        bandwidths_mhz=tuple(args.bandwidths),
        ues=ues,
        batch_per_ue=batch,
        epochs=args.epochs,
        syncs_per_epoch=args.syncs_per_epoch,
        target_accuracy=args.target_accuracy,
        max_micro_batches=args.max_micro_batches,
        seed=args.seed,
        schemes=tuple(args.schemes),
    )
    from edgecloud.splitlearn.data import dataset_spec

    print(f"data: {dataset_spec(config.dataset).description}")
    print(f"model: {config.model}; {len(ues)} UEs: {describe_ues(ues)}")
    print(
        f"bandwidths {', '.join(f'{b:g}' for b in config.bandwidths_mhz)} MHz; {batch} samples per UE per round; "
        f"{config.epochs} epochs per run; target test accuracy {100 * config.target_accuracy:g}%"
    )
    print("profiling, calibrating and measuring message latency ...", flush=True)
    total = len(config.bandwidths_mhz) * len(config.schemes) + 1  # + the pilot run
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
    ) as progress:
        task = progress.add_task("calibrating", total=total, status="")
        started = [0]

        def on_run(label: str) -> None:
            progress.update(task, description=label, completed=started[0], status="")
            started[0] += 1

        def on_round(p: Any) -> None:
            status = f"round {p.rounds_done}/{p.rounds}"
            if p.accuracy is not None:
                status += f", test accuracy {100 * p.accuracy:.2f}% at {p.time_s:.1f} s"
            progress.update(task, status=status)

        def checkpoint(partial: Any) -> None:
            if args.json:
                write_json(partial, Path(args.json))

        report = run_bench(config, on_run, on_round, checkpoint)
        progress.update(task, description="done", completed=total, status="")
    for line in describe_machine(report.machine):
        print(line)
    print(
        f"for the plans (echo probe): message latency {report.message_latency_s * 1e3:.2f} ms, late receive "
        f"{report.rows[-1]['late_receive_s'] * 1e3:.2f} ms; UE CPU in a live run "
        f"{report.ue_cpu_inflation:.2f}x the isolated calibration"
    )
    print(
        f"{'MHz':>5} {'scheme':17s} {'to target s':>11} {'rounds':>6} {'time_s':>8} {'pred_s':>8} {'err':>6} "
        f"{'final acc':>9}  plan"
    )
    for row in report.rows:
        for scheme in config.schemes:
            r = row[scheme]
            to_target = "not reached" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f}"
            rounds = "-" if r["rounds_to_target"] is None else str(r["rounds_to_target"])
            print(
                f"{row['bandwidth_mhz']:>5g} {scheme:17s} {to_target:>11} {rounds:>6} {r['time_s']:8.1f} "
                f"{r['predicted_s']:8.1f} {r['prediction_error']:+6.1%} {100 * r['final_accuracy']:8.2f}%  "
                f"cut {r['cut']}, micro-batches {', '.join(map(str, r['micro_batches']))}; pilot: latency "
                f"{r['message_latency_s'] * 1e3:.2f} ms, late receive {r['late_receive_s'] * 1e3:.2f} ms, "
                f"micro-batch overhead {r['micro_batch_overhead_s'] * 1e3:+.2f} ms (without it "
                f"{r['prediction_error_without_micro_batch_overhead']:+.1%})"
            )

    def pct(value: float | None) -> str:
        return "n/a (target not reached)" if value is None else f"{value:.1%}"

    for s in summarise(report.rows):
        print(
            f"{s['bandwidth_mhz']:g} MHz: time to target saved {pct(s['c2p2sl_time_to_target_saved'])} "
            f"(own cuts), {pct(s['same_cut_time_to_target_saved'])} (same cut); final accuracy "
            f"{s['c2p2sl_final_accuracy_delta_pp']:+.2f} / {s['same_cut_final_accuracy_delta_pp']:+.2f} points; "
            f"worst prediction error {s['max_abs_prediction_error']:.1%}"
        )
    if args.json:
        write_json(report, Path(args.json))
    if args.plot:
        plot(report_json(report), Path(args.plot))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from edgecloud.splitlearn.bench import merge_reports, plot

    merged = merge_reports([json.loads(Path(p).read_text()) for p in args.reports])
    Path(args.json).write_text(json.dumps(merged, indent=2) + "\n")
    if args.plot:
        plot(merged, Path(args.plot))
    for s in merged["summary"]:
        print(json.dumps(s))
    return 0


def _node(args: argparse.Namespace) -> int:
    from edgecloud.splitlearn.launch import node_main

    return node_main(args)


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Expected failures (missing data package, bad plan, a failed run) as one line, exit 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except (RuntimeError, ValueError, TimeoutError) as exc:
            print(f"\nerror: {exc}", file=sys.stderr)
            return 1

    return run


def _outputs(parser: argparse.ArgumentParser, json_required: bool) -> None:
    parser.add_argument("--json", required=json_required, default=None, help="write the report here")
    parser.add_argument("--plot", default=None, help="write a PNG of accuracy against training time here")


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    del bench  # the issue names the benchmark `edgecloud splitlearn bench`
    parser = commands.add_parser(
        "splitlearn", help="C2P2SL: pipelined split learning over wireless links", formatter_class=HELP
    )
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>")
    verbs.required = True

    train = verbs.add_parser(
        "train", help="train with UE and BS processes over gloo on loopback", formatter_class=HELP
    )
    _common(train)
    train.add_argument(
        "--schedule",
        choices=("sequential", "c2p2sl", "c2p2sl_fixed_cut"),
        default="c2p2sl",
        help="sequential SL, C2P2SL optimised, or C2P2SL at sequential's cut",
    )
    train.add_argument("--bandwidth-mhz", type=_positive_float, default=2.0, help="uplink band (MHz)")
    train.add_argument("--epochs", type=_positive_int, default=1, help="passes over the training set")
    train.add_argument(
        "--target-accuracy", type=_fraction, default=0.975, help="report when the test accuracy first reaches this"
    )
    train.add_argument("--json", default=None, help="write the run's result here")
    train.set_defaults(handler=_guarded(_train))

    plan = verbs.add_parser("plan", help="print the optimiser's choice and predicted times", formatter_class=HELP)
    _common(plan)
    plan.add_argument("--bandwidth-mhz", type=_positive_float, default=2.0, help="uplink band (MHz)")
    plan.set_defaults(handler=_guarded(_plan))

    run = verbs.add_parser(
        "bench",
        help="time to target accuracy: sequential vs C2P2SL (own cut, same cut) across bandwidths",
        formatter_class=HELP,
    )
    _common(run)
    run.add_argument(
        "--bandwidths", type=_positive_float, nargs="+", default=[1.0, 2.0, 5.0], metavar="MHZ", help="uplink bands"
    )
    run.add_argument("--epochs", type=_positive_int, default=2, help="fixed budget of every run, in epochs")
    run.add_argument(
        "--target-accuracy",
        type=_fraction,
        default=0.975,
        help="test accuracy to reach (the MNIST CNN levels off at 0.981-0.983)",
    )
    run.add_argument(
        "--schemes",
        nargs="+",
        choices=("sequential", "c2p2sl", "c2p2sl_fixed_cut"),
        default=["sequential", "c2p2sl", "c2p2sl_fixed_cut"],
        help="runs to make (all three plans are made); split a bandwidth over invocations, join with merge-bench",
    )
    _outputs(run, json_required=False)
    run.set_defaults(handler=_guarded(_bench))

    merge = verbs.add_parser(
        "merge-bench",
        help="merge bench JSONs of the same configuration (e.g. one bandwidth per run) and plot them",
        formatter_class=HELP,
    )
    merge.add_argument("reports", nargs="+", help="bench JSON files")
    _outputs(merge, json_required=True)
    merge.set_defaults(handler=_guarded(_merge))

    node = verbs.add_parser(
        "node",
        help="one process of a multi-machine run (BS or UE), started by torchrun",
        formatter_class=HELP,
        description="Run under torchrun: rank 0 is the BS, rank k the UE k-1. Example, BS and two UEs "
        "on machine A, two UEs on machine B: on A `torchrun --nnodes 2 --node-rank 0 --nproc-per-node 3 "
        "--master-addr A --master-port 29500 -m edgecloud.splitlearn.launch --dataset mnist ...`, on B the same "
        "with --node-rank 1 --nproc-per-node 2. See docs/splitlearn.md.",
    )
    from edgecloud.splitlearn.launch import add_node_arguments

    _common(node)
    add_node_arguments(node)
    node.set_defaults(handler=_guarded(_node))
