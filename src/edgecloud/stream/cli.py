"""``edgecloud stream serve|play|bench``: the AutoRec live-stream server, player and benchmark."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from edgecloud.errors import USAGE, CLIError, listen_failed, output_file

# NewReno sustains about 1.22 * MSS / (RTT * sqrt(loss)): 0.52 Mb/s at 5 % loss and 100 ms RTT,
# 0.37 Mb/s at 10 %. A stream above that rate measures throughput collapse, not loss recovery:
# at 2 Mb/s the README's example link (50 ms each way, 5 % bursty loss) stalled 211 times in
# 10 s. Server and benchmark default to a stream that such links carry (docs/stream.md).
DEFAULT_BITRATE_MBPS = 0.3


def _number(low: float, high: float, kind: type = float) -> Any:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low:g}, {high:g}], got {text}")
        return value

    return parse


def _number_list(low: float, high: float) -> Any:
    one = _number(low, high)

    def parse(text: str) -> list[float]:
        return [one(item) for item in text.split(",") if item.strip()]

    return parse


def _model_list(text: str) -> list[str]:
    from edgecloud.stream.bench import LOSS_MODELS

    models = [m.strip() for m in text.split(",") if m.strip()]
    for model in models:
        if model not in LOSS_MODELS:
            raise argparse.ArgumentTypeError(f"loss model must be one of {', '.join(LOSS_MODELS)}, got {model!r}")
    return models


def _add_autorec_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("AutoRec")
    group.add_argument(
        "--overhead-budget",
        type=_number(0, 10),
        default=0.10,
        help="redundant copy bytes per goodput byte (default 0.10)",
    )
    group.add_argument(
        "--recovery-target-ms",
        type=_number(1, 60_000),
        default=100.0,
        help="recovery latency the redundancy adapter aims for (default 100)",
    )
    group.add_argument(
        "--no-late-copies",
        action="store_true",
        help="do not copy first transmissions that waited so long in the send buffer that, lost once, "
        "they would reach the viewer later than any data so far",
    )
    group.add_argument(
        "--viewer-buffer-ms",
        type=_number(0, 600_000),
        default=300.0,
        help="playout delay viewers are assumed to start with; late copies protect only data whose loss "
        "would delay it past that and past every delay so far (default 300; 0 protects the most)",
    )
    group.add_argument(
        "--copy-plan",
        action="store_true",
        help="send a protection's first copy 0, 1/4, 1/2 or 1 srtt after its data, whichever recovers a lost "
        "retransmission fastest at the measured loss after each delay: helps with loss bursts in time; off by "
        "default, as with packet-counted bursts at 10%% loss it delayed copies into outages",
    )
    group.add_argument(
        "--first-copy-reserve",
        type=_number(0, 64, int),
        default=3,
        metavar="PACKETS",
        help="packets of budget credit that late data and later copies leave for the first copies of "
        "retransmissions (default 3; with 1, at 5%% loss about 2.5%% of lost retransmissions found no credit "
        "for a copy and the retransmission-loss p95 sat on a cliff; see docs/stream.md)",
    )
    group.add_argument(
        "--no-retransmit-before-reduction",
        action="store_true",
        help="let a retransmission wait for the halved window, as aioquic does "
        "(by default one packet leaves at once on entering recovery, RFC 9002 7.3.2)",
    )


def _add_source_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("live source (a synthetic video stream: one keyframe, then smaller frames)")
    group.add_argument("--fps", type=_number(1, 240), default=30.0, help="frames per second")
    group.add_argument(
        "--bitrate-mbps",
        type=_number(0.01, 1000),
        default=DEFAULT_BITRATE_MBPS,
        help="the stream's mean rate in Mbit/s; keep it below what the link's congestion control sustains "
        "at its loss and RTT (about 0.5 Mb/s at 5%% loss and 100 ms with NewReno), or the viewer stalls "
        "for want of throughput, whatever the recovery",
    )
    group.add_argument(
        "--gop", type=_number(1, 10_000, int), default=30, help="frames per group of pictures (one keyframe each)"
    )


def _autorec_config(args: argparse.Namespace) -> Any:
    from edgecloud.stream.controller import AutoRecConfig

    return AutoRecConfig(
        overhead_budget=args.overhead_budget,
        recovery_target_ms=args.recovery_target_ms,
        protect_late_data=not args.no_late_copies,
        viewer_buffer_ms=args.viewer_buffer_ms,
        retransmit_before_reduction=not args.no_retransmit_before_reduction,
        copy_plan=args.copy_plan,
        first_copy_reserve=args.first_copy_reserve,
    )


def _source_config(args: argparse.Namespace) -> Any:
    from edgecloud.stream.source import SourceConfig

    return SourceConfig(fps=args.fps, bitrate_mbps=args.bitrate_mbps, gop=args.gop)


def _serve(args: argparse.Namespace) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from edgecloud.stream.server import StreamServer
    from edgecloud.stream.source import LiveSource

    if (args.cert is None) != (args.key is None):
        raise CLIError("--cert and --key go together: give both, or neither for a self-signed certificate", USAGE)
    certificate = key = None
    if args.cert is not None:
        try:
            with open(args.cert, "rb") as cert_file, open(args.key, "rb") as key_file:
                certificate = x509.load_pem_x509_certificate(cert_file.read())
                key = load_pem_private_key(key_file.read(), password=None)
        except OSError as exc:
            raise CLIError(f"cannot read {exc.filename}: {exc.strerror}", USAGE) from exc
        except (ValueError, TypeError) as exc:  # not PEM, or a key with a password
            raise CLIError(
                f"--cert {args.cert} / --key {args.key}: not a PEM certificate and unencrypted key: {exc}", USAGE
            ) from exc
    source_config = _source_config(args)
    try:
        source = (
            LiveSource.from_sizes_file(args.frame_sizes, source_config)
            if args.frame_sizes
            else LiveSource(source_config)
        )
    except OSError as exc:
        raise CLIError(f"--frame-sizes: cannot read {args.frame_sizes}: {exc.strerror}", USAGE) from exc
    except ValueError as exc:
        raise CLIError(f"--frame-sizes {args.frame_sizes}: {exc}", USAGE) from exc
    autorec = None if args.baseline else _autorec_config(args)

    async def run() -> None:
        import signal
        from contextlib import suppress

        # Ctrl-C and SIGTERM close the viewers' connections and exit 0, from before the
        # "serving" line on. SIGINT gets its own handler too: a server started in the
        # background by a script inherits it ignored.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        with suppress(NotImplementedError):  # no signal handlers on some platforms
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
        server = StreamServer(
            args.host,
            args.port,
            autorec=autorec,
            source=source,
            certificate=certificate,
            private_key=key,
            congestion_control=args.congestion_control,
        )
        try:
            await server.start()
        except OSError as exc:
            raise listen_failed(exc, args.host, args.port, "--port") from exc
        host, port = server.address
        print(f"serving https://{host}:{port}/live?seconds=N over HTTP/3", flush=True)
        recovery = "aioquic's own (baseline)" if autorec is None else f"AutoRec: {autorec.describe()}"
        print(f"  recovery:           {recovery}", flush=True)
        print(f"  congestion control: {_CONGESTION_CONTROL_NAMES[args.congestion_control]}", flush=True)
        print(f"  source:             {_describe_source(args)}", flush=True)
        try:
            await stop.wait()
        finally:
            await server.close()
        print("stopped: viewers' connections closed", flush=True)

    asyncio.run(run())
    return 0


_CONGESTION_CONTROL_NAMES = {"reno": "NewReno (aioquic's default)", "cubic": "CUBIC"}


def _describe_source(args: argparse.Namespace) -> str:
    if args.frame_sizes:
        return f"frame sizes from {args.frame_sizes}, {args.fps:g} fps"
    return f"{args.bitrate_mbps:g} Mbit/s, {args.fps:g} fps, a keyframe every {args.gop} frames"


def _url(text: str) -> str:
    from edgecloud.stream.player import check_url

    try:
        return check_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _play(args: argparse.Namespace) -> int:
    from edgecloud.stream.player import play

    report = asyncio.run(
        play(
            args.url,
            playout_delay_s=args.playout_delay_ms / 1000,
            timeout_s=args.timeout,
            connect_timeout_s=args.connect_timeout,
        )
    )
    if report.status is None and report.frames == 0 and report.error is not None:
        raise CLIError(
            f"cannot play {args.url}: {report.error}; is `edgecloud stream serve` running there "
            "(and a relay, if the URL names one)?"
        )
    summary = report.summary()
    if args.json:
        summary["frames_timing"] = [t.__dict__ for t in report.timings]
        try:
            with open(args.json, "w") as out:
                json.dump(summary, out, indent=2)
        except OSError as exc:
            raise CLIError(f"--json: cannot write {args.json}: {exc.strerror}") from exc
    print(json.dumps(report.summary()))
    if report.status is not None and report.status != 200:
        raise CLIError(f"the server answered {report.status}; the URL's path must be /live?seconds=N")
    if report.error is not None:
        raise CLIError(f"the stream was cut short after {report.frames} frames: {report.error}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from edgecloud.bench.machine import LoadWatch
    from edgecloud.stream import bench, plots

    autorec = _autorec_config(args)
    source = _source_config(args)
    if args.loss_change and args.draws > 1:
        raise CLIError("--loss-change runs one draw; --draws applies to the side-by-side cases", USAGE)
    # the virtual clock's figures do not depend on the machine's load; the real clock's do
    watch = LoadWatch.begin(timed=not args.virtual)
    if args.loss_change:
        result = bench.run_loss_change(
            duration_s=args.duration,
            rtt_ms=args.rtt_ms[0],
            autorec=autorec,
            source=source,
            playout_delay_s=args.playout_delay_ms / 1000,
            rate_mbps=args.rate_mbps,
            virtual=args.virtual,
            congestion_control=args.congestion_control,
        )
        result["machine"] = watch.finish().as_dict()
        bench.write_json(args.json, result)
        if args.plot:
            plots.plot_loss_change(result, args.plot, autorec.overhead_budget)
        side = result["autorec"]
        print(json.dumps({k: side[k] for k in ("overhead", "stalls", "stall_s", "complete", "bytes_equal")}))
        problem = bench.wrong_bytes(side)
        if problem is not None:
            print(f"error: {problem}", file=sys.stderr)
        return 1 if problem else 0

    def progress(done: int, total: int, case: dict[str, Any]) -> None:
        b, a = case["baseline"], case["autorec"]
        print(
            f"[{done}/{total}] loss {case['loss']:g} {case['loss_model']} rtt {case['rtt_ms']:g} ms "
            f"seed {case['seed']}: "
            f"retx p95 {b['retx_loss_recovery_ms_p95']} -> {a['retx_loss_recovery_ms_p95']} ms, "
            f"stall {b['stall_s']} -> {a['stall_s']} s, overhead {a['overhead']:.3f}"
            + "".join(f", {side} cut short" for side in bench.SIDES if not case[side]["complete"]),
            flush=True,
        )

    cases = bench.run_cases(
        args.loss,
        args.loss_model,
        args.rtt_ms,
        duration_s=args.duration,
        autorec=autorec,
        source=source,
        playout_delay_s=args.playout_delay_ms / 1000,
        rate_mbps=args.rate_mbps,
        ack_path_loss=args.ack_path_loss,
        virtual=args.virtual,
        seed=args.seed,
        draws=args.draws,
        congestion_control=args.congestion_control,
        progress=progress,
    )
    load = watch.finish().as_dict()
    for case in cases:
        case["machine"] = load  # the file is a list of cases: each carries the run's machine record
    if args.draws > 1:
        _print_pooled(bench.pooled(cases))
    bench.write_json(args.json, cases)
    if args.plot:
        plots.plot_cases(cases, args.plot)
    # A stream the link cut short (an outage past aioquic's idle timeout, or past the
    # virtual run's drain) with the right bytes so far is a result; wrong bytes are a bug.
    short = sum(not c[side]["complete"] for c in cases for side in bench.SIDES)
    if short:
        print(f"{short} stream(s) cut short: their frozen rest counts as stall", file=sys.stderr)
    bad = bench.bad_streams(cases)
    for line in bad:
        print(f"error: {line}", file=sys.stderr)
    return 1 if bad else 0


def _print_pooled(pooled: list[dict[str, Any]]) -> None:
    for p in pooled:
        retx, stall = p["retx_loss_recovery_ms_p95"], p["stall_s"]
        interval, retx_interval = stall["ratio_interval95"], retx["ratio_interval95"]
        print(
            f"pooled over {p['draws']} draws, loss {p['loss']:g} {p['loss_model']} rtt {p['rtt_ms']:g} ms: "
            f"stall {stall['baseline']} -> {stall['autorec']} s (x{stall['ratio']}"
            + (f", 95% interval {interval[0]}-{interval[1]}" if interval else "")
            + f"), retx-loss p95 {retx['baseline']} -> {retx['autorec']} ms (x{retx['ratio']}"
            + (f", 95% interval {retx_interval[0]}-{retx_interval[1]}" if retx_interval else "")
            + "; "
            f"{retx['n_baseline']} / {retx['n_autorec']} losses, {_shares(p)} took >= 2 RTT), "
            f"overhead {p['overhead']['all']:.3f}, "
            + (
                f"cut short {p['incomplete']['baseline']} / {p['incomplete']['autorec']}"
                if p["incomplete"] is not None
                else "cut short: not recorded (an older file)"
            ),
            flush=True,
        )


def _shares(p: dict[str, Any]) -> str:
    """The share of lost retransmissions that took two RTTs or more, per side, as "5.1% / 2.6%"."""
    slow = p["retx_loss_over_2rtt"]
    return " / ".join("-" if slow[side] is None else f"{slow[side]:.1%}" for side in ("baseline", "autorec"))


def _pool(args: argparse.Namespace) -> int:
    from edgecloud.stream import bench

    runs = []
    for name in args.files:
        try:
            with open(name) as f:
                data = json.load(f)
        except (OSError, ValueError) as error:  # ValueError: not UTF-8, or not JSON
            raise CLIError(f"{name}: {error}", USAGE) from error
        if not isinstance(data, list) or not data or not all(isinstance(c, dict) for c in data):
            raise CLIError(f"{name}: not the case list `edgecloud stream bench --json` writes", USAGE)
        runs.append((name, data))
    if args.together:
        try:
            runs = [("together", bench.merge_runs(runs))]
        except ValueError as error:
            raise CLIError(str(error), USAGE) from error
        except (KeyError, TypeError) as error:
            raise CLIError(f"a case lacks {error} or has it of the wrong type", USAGE) from error
    files = {}
    for name, data in runs:
        try:
            files[name] = bench.pooled(data)
        except (KeyError, TypeError) as error:
            raise CLIError(f"{name}: a case lacks {error} or has it of the wrong type", USAGE) from error
    for name, pooled in files.items():
        print(f"{name}:")
        _print_pooled(pooled)
    if args.json:
        bench.write_json(args.json, files)
    return 0


def _add_congestion_control_option(parser: argparse.ArgumentParser, what: str) -> None:
    from edgecloud.stream.connection import CONGESTION_CONTROLS, DEFAULT_CONGESTION_CONTROL

    parser.add_argument(
        "--congestion-control",
        choices=CONGESTION_CONTROLS,
        default=DEFAULT_CONGESTION_CONTROL,
        help=f"{what}: aioquic's NewReno (its default) or CUBIC; AutoRec's copies leave beyond either's window",
    )


def register(commands: Any, bench: Any) -> None:
    stream = commands.add_parser("stream", help="AutoRec: live streaming over QUIC with server-side loss recovery")
    verbs = stream.add_subparsers(dest="verb", metavar="<verb>")
    verbs.required = True

    serve = verbs.add_parser("serve", help="serve /live?seconds=N over HTTP/3")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=_number(0, 65535, int), default=4433, help="UDP port (0: a free one)")
    serve.add_argument("--cert", help="PEM certificate (a self-signed one is made when omitted)")
    serve.add_argument("--key", help="PEM private key of --cert")
    serve.add_argument("--baseline", action="store_true", help="aioquic's recovery only, no AutoRec")
    serve.add_argument("--frame-sizes", help="file of frame sizes, one per line (e.g. from ffprobe)")
    _add_congestion_control_option(serve, "the server's congestion control")
    _add_autorec_options(serve)
    _add_source_options(serve)
    serve.set_defaults(handler=_serve)

    player = verbs.add_parser("play", help="play a live URL and report frame deadlines and stalls")
    player.add_argument("url", type=_url, help="https://HOST:PORT/live?seconds=N")
    player.add_argument(
        "--playout-delay-ms",
        type=_number(0, 60_000),
        default=300.0,
        help="playback starts this long after the first frame arrives; a frame later than its due time stalls it",
    )
    player.add_argument(
        "--timeout", type=_number(1, 86_400), default=None, help="give up on the stream after this many seconds"
    )
    player.add_argument(
        "--connect-timeout",
        type=_number(0.1, 600),
        default=10.0,
        metavar="SECONDS",
        help="give up when no QUIC handshake completes within this many seconds (nothing listening, "
        "or a relay pointing nowhere)",
    )
    player.add_argument("--json", type=output_file, help="write the report with per-frame timings here")
    player.set_defaults(handler=_play)

    runner = verbs.add_parser("bench", help="baseline vs AutoRec through edgecloud.netem")
    runner.add_argument("--json", required=True, type=output_file, help="where to write the results")
    runner.add_argument("--plot", type=output_file, help="PNG figure")
    runner.add_argument("--loss", type=_number_list(0, 0.5), default=[0.01, 0.05, 0.10], help="e.g. 0.01,0.05,0.1")
    runner.add_argument(
        "--loss-model",
        type=_model_list,
        default=["bernoulli", "bursty"],
        help="comma-separated: bernoulli (independent), bursty (Gilbert-Elliott, bursts of 3 packets), "
        "bursty-time (Gilbert-Elliott, bursts of 60 ms, about 3 packets of the default stream: they end "
        "on time even while a sender backs off its probe timeout); default bernoulli,bursty",
    )
    runner.add_argument("--rtt-ms", type=_number_list(0, 10_000), default=[20.0, 100.0], help="e.g. 20,100")
    runner.add_argument("--duration", type=_number(1, 3600), default=60.0, help="seconds of stream per case")
    runner.add_argument("--rate-mbps", type=_number(0.1, 10_000), default=20.0, help="link rate")
    runner.add_argument(
        "--playout-delay-ms", type=_number(0, 60_000), default=300.0, help="the viewers' playout delay"
    )
    runner.add_argument(
        "--seed",
        type=_number(0, 1_000_000, int),
        default=0,
        help="link seed: each case's loss pattern follows from it (same seed, same pattern)",
    )
    runner.add_argument(
        "--draws",
        type=_number(1, 1000, int),
        default=1,
        help="loss draws per case (seeds --seed, --seed + 1, ...); prints stall time, retransmission-loss p95 "
        "and overhead pooled over them",
    )
    runner.add_argument(
        "--ack-path-loss",
        action="store_true",
        help="lose packets on the viewer -> server path too (default: delay only)",
    )
    runner.add_argument(
        "--virtual",
        action="store_true",
        help="virtual clock through netem's Link model, no sockets (fast, large samples)",
    )
    runner.add_argument(
        "--loss-change",
        action="store_true",
        help="AutoRec alone with loss 1%% -> 10%% -> 1%% (first --rtt-ms); plots copies and overhead over time",
    )
    _add_congestion_control_option(runner, "both servers' congestion control, baseline and AutoRec alike")
    _add_autorec_options(runner)
    _add_source_options(runner)
    runner.set_defaults(handler=_bench)

    pool = verbs.add_parser(
        "pool",
        help="pool the draws of `stream bench` JSON files: stall time and retransmission-loss p95 with "
        "95%% bootstrap intervals, the share of lost retransmissions over 2 RTT, overhead, stall causes",
    )
    pool.add_argument(
        "files",
        nargs="+",
        help="JSON files written by `edgecloud stream bench --json`, each pooled on its own unless --together",
    )
    pool.add_argument(
        "--together",
        action="store_true",
        help="pool the draws of all files as one run (e.g. runs with other seeds); refused where a case's "
        "settings differ between files or a seed repeats",
    )
    pool.add_argument(
        "--json",
        type=output_file,
        help='write {file: pooled cases} here ({"together": pooled cases} with --together)',
    )
    pool.set_defaults(handler=_pool)
