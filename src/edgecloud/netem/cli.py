"""``edgecloud netem udp|tcp``: run a relay with an emulated link; ``edgecloud bench netem``: its timing.

Shaping options apply to both directions; ``--up-*`` / ``--down-*`` override one direction
(uplink = client → target). ``--schedule FILE.json`` gives profiles over time instead.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecloud.errors import USAGE, CLIError, listen_failed, output_file

if TYPE_CHECKING:
    from edgecloud.netem.profile import ProfileLike
    from edgecloud.netem.udp import RelayStats

DIRECTIONS = ("up", "down")
SHAPING = (
    "profile",
    "delay_ms",
    "jitter_ms",
    "rate_mbps",
    "queue_bytes",
    "loss",
    "loss_model",
    "burst_len",
    "burst_ms",
)


def host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6addr]:PORT`` for IPv6) with a port in 0..65535."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port in 0..65535, got {text!r}")
    return host, int(port)


def _number(low: float, *, inclusive: bool = True, high: float | None = None, kind: type = float) -> Any:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a{'n integer' if kind is int else ' number'}, got {text!r}"
            ) from None
        if not math.isfinite(value):  # NaN would pass every comparison below, inf fail only later
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        too_low = value < low if inclusive else value <= low
        if too_low or (high is not None and value > high):
            bound = f"in [{low:g}, {high:g}]" if high is not None else f"{'>=' if inclusive else '>'} {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def _add_shaping(parser: argparse.ArgumentParser, prefix: str, title: str) -> None:
    from edgecloud.netem.profile import DEFAULT_QUEUE_BYTES, LOSS_MODEL_NAMES, PROFILES

    group = parser.add_argument_group(title)
    dashed = f"--{prefix}-" if prefix else "--"
    dest = f"{prefix}_" if prefix else ""

    def default(value: str) -> str:
        """What applies when the option is not given: the shared option's value, for one direction."""
        return f" (default: {value})" if not prefix else " (default: the value of the option without --up-/--down-)"
    group.add_argument(
        f"{dashed}profile",
        dest=f"{dest}profile",
        choices=sorted(PROFILES),
        help="start from a named link profile" + default("none"),
    )
    group.add_argument(
        f"{dashed}delay-ms",
        dest=f"{dest}delay_ms",
        type=_number(0.0),
        metavar="MS",
        help="one-way delay in ms" + default("0"),
    )
    group.add_argument(
        f"{dashed}jitter-ms",
        dest=f"{dest}jitter_ms",
        type=_number(0.0),
        metavar="MS",
        help="uniform delay variation ±MS, no reordering" + default("0"),
    )
    group.add_argument(
        f"{dashed}rate-mbps",
        dest=f"{dest}rate_mbps",
        type=_number(0.0, inclusive=False),
        metavar="MBPS",
        help="rate limit in Mbit/s" + default("unlimited"),
    )
    group.add_argument(
        f"{dashed}queue-bytes",
        dest=f"{dest}queue_bytes",
        type=_number(1, kind=int),
        metavar="BYTES",
        help="bottleneck queue size, tail drop beyond it" + default(f"{DEFAULT_QUEUE_BYTES}"),
    )
    group.add_argument(
        f"{dashed}loss",
        dest=f"{dest}loss",
        type=_number(0.0, high=1.0),
        metavar="P",
        help="mean packet loss rate in [0, 1]" + default("0"),
    )
    group.add_argument(
        f"{dashed}loss-model",
        dest=f"{dest}loss_model",
        choices=LOSS_MODEL_NAMES,
        help=f"bernoulli: independent losses (default); gilbert-elliott: bursts counted in packets "
        f"({dashed}burst-len), so a burst lasts N packets however far apart they are sent; "
        f"gilbert-elliott-time: bursts lasting a time ({dashed}burst-ms), whatever the packet rate, as with "
        "fading, handover or interference, so packets sent far apart see nearly independent losses",
    )
    group.add_argument(
        f"{dashed}burst-len",
        dest=f"{dest}burst_len",
        type=_number(1.0),
        metavar="N",
        help="mean loss burst in packets, for gilbert-elliott only; default 3",
    )
    group.add_argument(
        f"{dashed}burst-ms",
        dest=f"{dest}burst_ms",
        type=_number(0.0, inclusive=False),
        metavar="MS",
        help="mean loss burst in ms (time in the bad state), for gilbert-elliott-time only; default 20",
    )


BURST_OPTIONS = {"burst_len": "gilbert-elliott", "burst_ms": "gilbert-elliott-time"}
"""Each burst option and the one loss model it sets the burst of."""


def _direction_profile(args: argparse.Namespace, direction: str) -> ProfileLike:
    """``direction``'s profile from the options: its own ``--up-*`` / ``--down-*`` where given,
    else the shared ones.

    A burst option must fit the loss model in force when it is given at the model's level or a
    more specific one (``--burst-ms`` with ``--loss-model``, ``--down-burst-ms`` with either). A
    shared burst option that does not fit a direction's own model is for the other direction or the
    shared model, and is ignored here: ``--loss-model gilbert-elliott --burst-len 3
    --down-loss-model gilbert-elliott-time`` keeps packet bursts of 3 uplink only.
    """
    from dataclasses import replace

    from edgecloud.netem.profile import (
        DEFAULT_BURST_LEN,
        DEFAULT_BURST_MS,
        PROFILES,
        Bernoulli,
        GilbertElliott,
        GilbertElliottTime,
        LinkProfile,
    )

    def own(name: str) -> Any:
        return getattr(args, f"{direction}_{name}")

    def pick(name: str) -> Any:
        return own(name) if own(name) is not None else getattr(args, name)

    def option(name: str) -> str:
        """The option that gave ``name``'s value: ``--down-burst-ms`` if set, else ``--burst-ms``."""
        flag = name.replace("_", "-")
        return f"--{direction}-{flag}" if own(name) is not None else f"--{flag}"

    name = pick("profile")
    profile = PROFILES[name] if name is not None else LinkProfile()
    changes = {field: pick(field) for field in ("delay_ms", "jitter_ms", "rate_mbps", "queue_bytes")}
    profile = replace(profile, **{k: v for k, v in changes.items() if v is not None})
    loss, model = pick("loss"), pick("loss_model")
    if loss is None:
        if model is not None or any(pick(burst) is not None for burst in BURST_OPTIONS):
            raise ValueError(f"--{direction}-loss / --loss is required with --loss-model, --burst-len or --burst-ms")
        return profile
    in_force = model or "bernoulli"
    if model is None:
        model_given = "no --loss-model given, so the model is bernoulli"
    else:
        model_given = f"{option('loss_model')} is {model}"
    bursts: dict[str, float] = {}
    for burst, fits in BURST_OPTIONS.items():
        if pick(burst) is None:
            continue
        if own(burst) is None and own("loss_model") not in (None, fits):
            continue  # a shared burst for another model than this direction's own: not for us
        if in_force != fits:
            other = next((o for o, m in BURST_OPTIONS.items() if m == in_force), None)
            prefix = f"--{direction}-" if own(burst) is not None else "--"
            hint = f"; bursts of {in_force} are set with {prefix}{other.replace('_', '-')}" if other else ""
            raise ValueError(f"{model_given}; {option(burst)} applies only to {fits}{hint}")
        bursts[burst] = pick(burst)
    if in_force != "bernoulli" and loss >= 1.0:
        # from_mean would name its own parameter; the user gave an option.
        raise ValueError(
            f"{option('loss')} must be in [0, 1) with {option('loss_model')} {in_force} "
            f"(a mean loss of 1 needs a bad state that is never left), got {loss:g}"
        )
    if in_force == "gilbert-elliott":
        return replace(profile, loss=GilbertElliott.from_mean(loss, bursts.get("burst_len", DEFAULT_BURST_LEN)))
    if in_force == "gilbert-elliott-time":
        return replace(profile, loss=GilbertElliottTime.from_mean(loss, bursts.get("burst_ms", DEFAULT_BURST_MS)))
    return replace(profile, loss=Bernoulli(loss) if loss > 0 else None)


def _profiles(args: argparse.Namespace) -> tuple[ProfileLike, ProfileLike]:
    from edgecloud.netem.profile import Schedule

    if args.schedule is None:
        return _direction_profile(args, "up"), _direction_profile(args, "down")
    shaping = [
        f"--{d + '-' if d else ''}{name.replace('_', '-')}"
        for d in ("", "up", "down")
        for name in SHAPING
        if getattr(args, f"{d}_{name}" if d else name) is not None
    ]
    if shaping:
        raise ValueError(f"--schedule cannot be combined with {', '.join(shaping)}; put them in the file")
    try:
        data = json.loads(Path(args.schedule).read_text())
    except OSError as exc:
        raise ValueError(f"--schedule: cannot read {args.schedule}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"--schedule: {args.schedule} is not valid JSON: {exc}") from exc
    if isinstance(data, dict):
        if set(data) != {"uplink", "downlink"}:
            raise ValueError('--schedule: a JSON object must have exactly the keys "uplink" and "downlink"')
        return Schedule.from_json(data["uplink"]), Schedule.from_json(data["downlink"])
    schedule = Schedule.from_json(data)
    return schedule, schedule


def format_stats(stats: RelayStats) -> str:
    header = (
        f"{'direction':<10}{'packets in':>12}{'bytes in':>14}{'delivered':>12}{'bytes out':>14}"
        f"{'lost':>8}{'queue drop':>12}{'errors':>8}"
    )
    rows = [header]
    for name, counters in (("uplink", stats.uplink), ("downlink", stats.downlink)):
        rows.append(
            f"{name:<10}{counters.packets_in:>12}{counters.bytes_in:>14}{counters.packets_delivered:>12}"
            f"{counters.bytes_delivered:>14}{counters.dropped_loss:>8}{counters.dropped_queue:>12}"
            f"{counters.send_errors:>8}"
        )
    return "\n".join(rows)


async def _run_relay(args: argparse.Namespace, uplink: ProfileLike, downlink: ProfileLike) -> None:
    import asyncio
    import signal
    from contextlib import suppress

    from edgecloud.netem.tcp import TcpProxy
    from edgecloud.netem.udp import UdpRelay

    relay_class = UdpRelay if args.protocol == "udp" else TcpProxy
    relay = relay_class(listen=args.listen, target=args.to, uplink=uplink, downlink=downlink, seed=args.seed)
    try:
        await relay.start()
    except OSError as exc:
        raise listen_failed(exc, args.listen[0], args.listen[1], "--listen") from exc
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    # Ctrl-C and SIGTERM end the relay and print its stats. SIGINT gets a handler of its own
    # too: a process started in the background by a non-interactive shell inherits SIGINT
    # ignored, and Python then leaves it ignored, so Ctrl-C (or kill -INT) did nothing.
    with suppress(NotImplementedError):  # no signal handlers on some platforms
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
    host, port = relay.address
    print(
        f"netem {args.protocol}: listening on {host}:{port}, relaying to {args.to[0]}:{args.to[1]}",
        flush=True,
    )
    for name, profile in (("uplink", uplink), ("downlink", downlink)):
        lines = profile.describe().splitlines()
        print(f"  {name + ':':<10}{lines[0]}", flush=True)
        for line in lines[1:]:
            print(f"  {'':<10}{line}", flush=True)
    try:
        await asyncio.sleep(args.duration if args.duration is not None else float("inf"))
    except asyncio.CancelledError:
        pass  # Ctrl-C or SIGTERM: fall through to the stats
    finally:
        await relay.stop()
        print(format_stats(relay.stats), flush=True)


def run_relay(args: argparse.Namespace) -> int:
    import asyncio

    try:
        uplink, downlink = _profiles(args)
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc), USAGE) from exc
    asyncio.run(_run_relay(args, uplink, downlink))
    return 0


def run_bench(args: argparse.Namespace) -> int:
    import asyncio

    from edgecloud.bench.machine import LoadWatch
    from edgecloud.netem.accuracy import format_report, measure

    watch = LoadWatch.begin()
    report = asyncio.run(measure(delay_ms=args.delay_ms, packets=args.packets, interval_ms=args.interval_ms))
    print(format_report(report))
    report["machine_load"] = watch.finish().as_dict()
    if args.json is not None:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    netem = commands.add_parser(
        "netem",
        help="userspace link emulator: relay UDP or TCP with delay, jitter, rate limit and loss",
        description="Relay UDP datagrams or TCP connections to a target through an emulated link "
        "(one-way delay, jitter, rate limit with a tail-drop queue, Bernoulli or Gilbert-Elliott loss with "
        "bursts counted in packets or in time), "
        "per direction and optionally changing over time. Ctrl-C stops it and prints per-direction stats.",
    )
    protocols = netem.add_subparsers(dest="protocol", metavar="udp|tcp")
    protocols.required = True
    for protocol, summary in (
        ("udp", "relay UDP datagrams; one upstream socket per client address"),
        ("tcp", "proxy TCP connections; loss becomes retransmission delay (bytes are never lost)"),
    ):
        parser = protocols.add_parser(
            protocol,
            help=summary,
            description=f"{summary}. Options without --up-/--down- shape both directions "
            "(uplink = client to target, downlink = target to client).",
            epilog='Schedule file: a JSON list [{"at_s": 0, "delay_ms": 50, "loss": 0.01}, '
            '{"at_s": 30, "profile": "tactical-radio"}, ...] applied to both directions, or '
            '{"uplink": [...], "downlink": [...]}. loss may also be {"model": "gilbert-elliott", '
            '"mean": 0.05, "burst_len": 3} (bursts in packets) or {"model": "gilbert-elliott-time", '
            '"mean": 0.05, "burst_ms": 20} (bursts in time). Times are seconds since start.',
        )
        parser.add_argument(
            "--listen",
            type=host_port,
            default=("127.0.0.1", 0),
            metavar="HOST:PORT",
            help="address to listen on (default 127.0.0.1:0, a free port; printed at start)",
        )
        parser.add_argument("--to", type=host_port, required=True, metavar="HOST:PORT", help="target address")
        _add_shaping(parser, "", "link shaping, both directions")
        _add_shaping(parser, "up", "uplink only (client to target), overriding the above")
        _add_shaping(parser, "down", "downlink only (target to client), overriding the above")
        parser.add_argument("--schedule", metavar="FILE.json", help="profiles over time (see below)")
        parser.add_argument("--seed", type=int, default=0, help="seed for loss and jitter (default 0)")
        parser.add_argument(
            "--duration",
            type=_number(0.0, inclusive=False),
            metavar="SECONDS",
            help="stop after this long (default: until Ctrl-C)",
        )
        parser.set_defaults(handler=run_relay)

    parser = bench.add_parser(
        "netem",
        help="timing accuracy of the emulator: delivered vs configured delay on loopback",
        description="Echo round trips on loopback, direct (baseline) and through the UDP relay and TCP "
        "proxy with a configured one-way delay; reports the delay error percentiles.",
    )
    parser.add_argument(
        "--delay-ms", type=_number(0.0), default=20.0, metavar="MS", help="the configured one-way delay"
    )
    parser.add_argument("--packets", type=_number(1, kind=int), default=2000, help="round trips per path")
    parser.add_argument(
        "--interval-ms", type=_number(0.0, inclusive=False), default=2.0, metavar="MS", help="between round trips"
    )
    parser.add_argument("--json", type=output_file, metavar="FILE", help="write the report as JSON")
    parser.set_defaults(handler=run_bench)
