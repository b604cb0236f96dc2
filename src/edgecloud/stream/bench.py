"""``edgecloud stream bench``: baseline and AutoRec side by side through ``edgecloud.netem``.

For each case (loss rate × loss model × RTT) two complete set-ups run at the same time,
each in its own process: a stream server (baseline: aioquic's recovery unchanged; AutoRec),
a :class:`~edgecloud.netem.UdpRelay` with the case's link, and the aioquic player. Both
sides stream the same source (same frames, same bytes) over links with the same profile and
seed. Per side we report the server's recovery latency per loss event (first losses and
retransmission losses; see :mod:`edgecloud.stream.meter`), the player's stalls, the
redundancy overhead and the goodput, and check the received bytes hash equal to the sent.

``--virtual`` runs the same cases on a virtual clock through netem's sans-I/O ``Link``
(the model the relay runs), with no sockets: minutes of stream in seconds of CPU, free of
the shared machine's scheduling noise, so long runs give large samples.

``--loss-change`` runs AutoRec alone on a link whose loss goes 1 % → 10 % → 1 % and
records the controller's time series (measured loss, copies per retransmission, overhead).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecloud.netem import Bernoulli, GilbertElliott, GilbertElliottTime, Link, LinkProfile, Schedule, UdpRelay
from edgecloud.stream.attribution import CAUSES, FIRST_LOSS_SPLIT
from edgecloud.stream.connection import DEFAULT_CONGESTION_CONTROL
from edgecloud.stream.controller import AutoRecConfig
from edgecloud.stream.player import play
from edgecloud.stream.server import StreamServer
from edgecloud.stream.source import LiveSource, SourceConfig
from edgecloud.stream.virtual import VirtualPair, stream_live

# bursty: Gilbert-Elliott with bursts of BURST_LEN packets; bursty-time: bursts of BURST_MS
# (netem's GilbertElliottTime), which end when their time is up however few packets the sender
# sends meanwhile (a packet-counted burst follows a sender in probe-timeout backoff from probe to
# probe, seconds apart).
LOSS_MODELS = ("bernoulli", "bursty", "bursty-time")
BURST_LEN = 3.0
# The same mean burst in time: 3 packets at the 51-57 packets/s that the bench's default stream
# (0.3 Mb/s, see the CLI) sends at 5 % loss and 100 ms.
BURST_MS = 60.0
SIDES = ("baseline", "autorec")


@dataclass(frozen=True)
class LinkSpec:
    """One direction's link, as plain data so it crosses process boundaries."""

    loss: float
    loss_model: str
    rtt_ms: float
    rate_mbps: float = 20.0
    burst_len: float = BURST_LEN
    burst_ms: float = BURST_MS
    ack_path_loss: bool = False  # the loss applies to the viewer -> server direction too

    def __post_init__(self) -> None:
        if not 0.0 <= self.loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {self.loss}")
        if self.loss_model not in LOSS_MODELS:
            raise ValueError(f"loss_model must be one of {', '.join(LOSS_MODELS)}, got {self.loss_model!r}")
        if not 0.0 <= self.rtt_ms <= 10_000:
            raise ValueError(f"rtt_ms must be in [0, 10000], got {self.rtt_ms}")

    def burst(self) -> dict[str, float]:
        """The mean loss burst of a bursty model, for the record."""
        return {"bursty": {"burst_len": self.burst_len}, "bursty-time": {"burst_ms": self.burst_ms}}.get(
            self.loss_model, {}
        )

    def profile(self, loss: float | None = None) -> LinkProfile:
        """The data path's profile (server -> viewer)."""
        p = self.loss if loss is None else loss
        model: Bernoulli | GilbertElliott | GilbertElliottTime | None = None
        if p > 0 and self.loss_model == "bernoulli":
            model = Bernoulli(p)
        elif p > 0 and self.loss_model == "bursty":
            model = GilbertElliott.from_mean(p, self.burst_len)
        elif p > 0 and self.loss_model == "bursty-time":
            model = GilbertElliottTime.from_mean(p, self.burst_ms)
        return LinkProfile(delay_ms=self.rtt_ms / 2, rate_mbps=self.rate_mbps, loss=model)


@dataclass(frozen=True)
class SideSpec:
    link: LinkSpec
    autorec: AutoRecConfig | None
    duration_s: float
    source: SourceConfig = field(default_factory=SourceConfig)
    playout_delay_s: float = 0.3
    seed: int = 0
    # (seconds, loss) steps for a loss that changes mid-stream; empty for a fixed loss.
    loss_steps: tuple[tuple[float, float], ...] = ()
    virtual: bool = False  # a virtual clock and netem's Link model instead of sockets and real time
    congestion_control: str = DEFAULT_CONGESTION_CONTROL  # the server's (NewReno or CUBIC), both sides alike

    def data_path(self) -> LinkProfile | Schedule:
        if self.loss_steps:
            return Schedule([(t, self.link.profile(loss)) for t, loss in self.loss_steps])
        return self.link.profile()

    def ack_path(self) -> LinkProfile | Schedule:
        # Server-side recovery acts on the data path; losing ACKs too adds PTO-backoff
        # freezes that no server can shorten, so by default the ACK path only has the delay.
        return self.data_path() if self.link.ack_path_loss else self.link.profile(loss=0.0)


SIDE_KEYS = (
    "recovery_ms_p50",
    "recovery_ms_p95",
    "recovery_ms_p99",
    "retx_loss_recovery_ms_p50",
    "retx_loss_recovery_ms_p95",
    "retx_loss_recovery_ms_p99",
    "retx_loss_recovery_ms",
    "first_losses",
    "retx_losses",
    "unrecovered",
    "packets_sent",
    "packets_lost",
    "goodput_bytes",
    "retransmitted_bytes",
    "copy_bytes",
    "stalls",
    "stall_s",
    "unfinished_stall_s",
    "complete",
    "prefix_equal",
    "overhead",
    "goodput_mbps",
    "frames",
    "bytes_equal",
)


def run_virtual_side(spec: SideSpec) -> dict[str, Any]:
    """One side on a virtual clock through netem's sans-I/O Link model."""
    down = Link(spec.data_path(), seed=f"{spec.seed}/downlink")
    up = Link(spec.ack_path(), seed=f"{spec.seed}/uplink")
    pair = VirtualPair(
        spec.autorec,
        downlink=lambda now, data, frames: down.send(now, len(data)),
        uplink=lambda now, data, frames: up.send(now, len(data)),
        congestion_control=spec.congestion_control,
    )
    pair.handshake()
    stats = stream_live(pair, LiveSource(spec.source), spec.duration_s, spec.playout_delay_s)
    result = {key: stats[key] for key in SIDE_KEYS}
    result.update(
        stall_causes=stats["stall_causes"],
        first_sent_late=stats["first_sent_late"],
        srtt_ms=round(stats["srtt_ms"], 2),
        link_down_dropped=down.stats.dropped_loss,
        link_down_packets=down.stats.packets_in,
        link_up_dropped=up.stats.dropped_loss,
    )
    if "history" in stats:
        result["copy_bytes_by_reason"] = stats["copy_bytes_by_reason"]
        result["history"] = stats["history"]
    return result


async def run_side(spec: SideSpec) -> dict[str, Any]:
    """One server + relay + player run; returns the side's metrics."""
    source = LiveSource(spec.source)
    server = StreamServer(autorec=spec.autorec, source=source, congestion_control=spec.congestion_control)
    await server.start()
    relay = UdpRelay(target=server.address, uplink=spec.ack_path(), downlink=spec.data_path(), seed=spec.seed)
    await relay.start()
    host, port = relay.address
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        report = await play(
            f"https://{host}:{port}/live?seconds={spec.duration_s!r}",
            playout_delay_s=spec.playout_delay_s,
            timeout_s=spec.duration_s * 3 + 30,
            expected_pts=[f.pts_s for f in source.frames(spec.duration_s)],
        )
    finally:
        elapsed = loop.time() - started
        await relay.stop()
        await server.close()
    connection = server.connections[-1].connection
    stats = connection.recovery_stats()
    body = source.body(spec.duration_s)
    result: dict[str, Any] = {key: stats[key] for key in SIDE_KEYS if key in stats}
    result.update(
        stalls=report.stalls,
        stall_s=round(report.stall_s, 4),
        unfinished_stall_s=round(report.unfinished_stall_s, 4),
        complete=report.ended,  # the stream ended (its FIN arrived)
        prefix_equal=hashlib.sha256(body[: report.bytes]).hexdigest() == report.sha256,
        overhead=round(stats["overhead"], 5),
        goodput_mbps=round(report.bytes * 8 / elapsed / 1e6, 4) if elapsed > 0 else 0.0,
        frames=report.frames,
        bytes_received=report.bytes,
        bytes_equal=report.ended and report.sha256 == hashlib.sha256(body).hexdigest(),
        player_error=report.error,
        link_down_dropped=relay.stats.downlink.dropped_loss,
        link_down_packets=relay.stats.downlink.packets_in,
        link_up_dropped=relay.stats.uplink.dropped_loss,
        srtt_ms=round(stats["srtt_ms"], 2),
    )
    if connection.controller is not None:
        result["copy_bytes_by_reason"] = stats["copy_bytes_by_reason"]
        result["history"] = [asdict(s) for s in connection.controller.history]
    return result


def _run_side_in_process(spec: SideSpec) -> dict[str, Any]:
    return run_virtual_side(spec) if spec.virtual else asyncio.run(run_side(spec))


def wrong_bytes(side: dict[str, Any]) -> str | None:
    """What was wrong with a side's bytes, or None: a stream that ended with other bytes
    than were sent, or a stream cut short whose bytes so far are not the start of the sent
    stream. A stream the link cut short with the right bytes so far is a result, not an
    error: its frozen rest counts as stall."""
    if side["complete"] and not side["bytes_equal"]:
        return "the stream ended with other bytes than were sent"
    if not side["complete"] and not side["prefix_equal"]:
        return "cut short, and the bytes received are not the start of the stream"
    return None


def bad_streams(cases: list[dict[str, Any]]) -> list[str]:
    """Every side of ``cases`` with wrong bytes (see wrong_bytes), named."""
    return [
        f"loss {case['loss']:g} {case['loss_model']} rtt {case['rtt_ms']:g} ms seed {case['seed']} {side}: {problem}"
        for case in cases
        for side in SIDES
        if (problem := wrong_bytes(case[side])) is not None
    ]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 4)


def run_cases(
    losses: list[float],
    loss_models: list[str],
    rtts_ms: list[float],
    *,
    duration_s: float,
    autorec: AutoRecConfig,
    source: SourceConfig,
    playout_delay_s: float,
    rate_mbps: float,
    ack_path_loss: bool = False,
    virtual: bool = False,
    seed: int = 0,
    draws: int = 1,
    congestion_control: str = DEFAULT_CONGESTION_CONTROL,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Every case, baseline and AutoRec side by side (two processes per case), for each of
    ``draws`` loss draws (seeds ``seed`` .. ``seed + draws - 1``).

    Both sides of a case share the link seed ``seed * 1000 + case index``, so runs with
    different ``seed`` draw different loss patterns and the same ``seed`` repeats them.
    """
    cases = []
    settings = _settings(autorec, source, playout_delay_s, rate_mbps, congestion_control)
    combos = [(p, m, r) for p in losses for m in loss_models for r in rtts_ms if not (p == 0 and m != loss_models[0])]
    runs = [(s, index, combo) for s in range(seed, seed + draws) for index, combo in enumerate(combos)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        for done, (draw_seed, index, (loss, model, rtt)) in enumerate(runs, 1):
            link = LinkSpec(loss=loss, loss_model=model, rtt_ms=rtt, rate_mbps=rate_mbps, ack_path_loss=ack_path_loss)
            sides = {
                name: SideSpec(
                    link,
                    config,
                    duration_s,
                    source,
                    playout_delay_s,
                    seed=draw_seed * 1000 + index,
                    virtual=virtual,
                    congestion_control=congestion_control,
                )
                for name, config in (("baseline", None), ("autorec", autorec))
            }
            futures = {name: pool.submit(_run_side_in_process, spec) for name, spec in sides.items()}
            results = {name: f.result() for name, f in futures.items()}
            for side in results.values():
                side.pop("history", None)
            base, auto = results["baseline"], results["autorec"]
            case = {
                "loss": loss,
                "loss_model": model,
                **(link.burst() if loss > 0 else {}),
                "rtt_ms": rtt,
                "duration_s": duration_s,
                "ack_path_loss": ack_path_loss,
                "clock": "virtual" if virtual else "real",
                "seed": draw_seed,
                **settings,
                "baseline": base,
                "autorec": auto,
                "ratios": {
                    "retx_loss_recovery_p95": ratio(
                        auto["retx_loss_recovery_ms_p95"], base["retx_loss_recovery_ms_p95"]
                    ),
                    "recovery_p95": ratio(auto["recovery_ms_p95"], base["recovery_ms_p95"]),
                    "stall_s": ratio(auto["stall_s"], base["stall_s"]),
                },
            }
            cases.append(case)
            if progress is not None:
                progress(done, len(runs), case)
    return cases


def _settings(
    autorec: AutoRecConfig,
    source: SourceConfig,
    playout_delay_s: float,
    rate_mbps: float,
    congestion_control: str,
) -> dict:
    """What a run was configured with, recorded beside its results so a file says how to rerun it."""
    return {
        "autorec_config": asdict(autorec),
        "source": asdict(source),
        "playout_delay_s": playout_delay_s,
        "rate_mbps": rate_mbps,
        "congestion_control": congestion_control,
    }


def by_case(cases: list[dict[str, Any]]) -> dict[tuple[float, str, float], list[dict[str, Any]]]:
    """The draws of each case (loss, loss model, RTT), in run order."""
    groups: dict[tuple[float, str, float], list[dict[str, Any]]] = {}
    for case in cases:
        groups.setdefault((case["loss"], case["loss_model"], case["rtt_ms"]), []).append(case)
    return groups


# What a case's draws must share to be pooled across runs: everything but the seed and the
# results. Files from before congestion_control was recorded ran NewReno (whatever the default
# is now), so a missing one reads "reno".
RUN_SETTINGS = (
    "duration_s",
    "ack_path_loss",
    "clock",
    "autorec_config",
    "source",
    "playout_delay_s",
    "rate_mbps",
    "congestion_control",
    "burst_len",
    "burst_ms",
)


def merge_runs(runs: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """The draws of several ``stream bench`` runs, given as (file name, cases), as one run.

    Refused with ValueError, naming the files, where a case's draws were run with different
    settings (another controller, budget, duration, clock ...) or where one draw (a case and
    a seed) appears twice: pooling those would mix conditions or count a loss pattern twice.
    """
    merged: list[dict[str, Any]] = []
    settings: dict[tuple[float, str, float], tuple[str, dict[str, Any]]] = {}
    seen: dict[tuple[float, str, float, Any], str] = {}
    for name, cases in runs:
        for case in cases:
            key = (case["loss"], case["loss_model"], case["rtt_ms"])
            these = {k: case.get(k, "reno" if k == "congestion_control" else None) for k in RUN_SETTINGS}
            first_name, first = settings.setdefault(key, (name, these))
            differ = sorted(k for k in RUN_SETTINGS if these[k] != first[k])
            if differ:
                raise ValueError(
                    f"{name} and {first_name} ran loss {key[0]:g} {key[1]} rtt {key[2]:g} ms with different "
                    f"{', '.join(differ)}: not one condition, so not pooled together"
                )
            draw = (*key, case["seed"])
            if draw in seen:
                raise ValueError(
                    f"{name} and {seen[draw]} both hold seed {case['seed']} of loss {key[0]:g} {key[1]} "
                    f"rtt {key[2]:g} ms: a draw counted twice"
                )
            seen[draw] = name
            merged.append(case)
    return merged


def pooled(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per case over its draws: stall time summed on each side, their ratio and its 95 %
    bootstrap interval (from 10 draws on), the p95 of every retransmission loss's recovery
    latency on each side, their ratio and its interval likewise, the range of the per-draw
    p95 ratios, the share of retransmission losses that took two RTTs or more on each side, overhead
    (copy bytes over goodput bytes of all draws, and the per-draw range), the draws each side
    had cut short (None for files from before ``complete`` was recorded), and the stall
    causes summed (virtual runs).

    Total stall time is an extreme value (a player that stalls until late data arrives has
    that much more buffer afterwards, so a run's stall time is its worst delay past the
    playout delay), so one draw's ratio swings widely; pooled draws are the measure.
    """
    out = []
    for (loss, model, rtt), group in by_case(cases).items():
        base = sum(c["baseline"]["stall_s"] for c in group)
        auto = sum(c["autorec"]["stall_s"] for c in group)
        p95 = [r for c in group if (r := c["ratios"]["retx_loss_recovery_p95"]) is not None]
        overhead = [c["autorec"]["overhead"] for c in group]
        retx = {side: [v for c in group for v in c[side].get("retx_loss_recovery_ms", [])] for side in SIDES}
        retx_p95 = {side: p95_ms(values) for side, values in retx.items()}
        goodput = sum(c["autorec"]["goodput_bytes"] for c in group)
        out.append(
            {
                "loss": loss,
                "loss_model": model,
                **{k: group[0][k] for k in ("burst_len", "burst_ms") if k in group[0]},
                "rtt_ms": rtt,
                "draws": len(group),
                "stall_s": {
                    "baseline": round(base, 4),
                    "autorec": round(auto, 4),
                    "ratio": ratio(auto, base),
                    "ratio_interval95": stall_ratio_interval(group),
                },
                # draws whose stream was cut short (their frozen rest is in stall_s)
                "incomplete": {side: sum(not c[side]["complete"] for c in group) for side in SIDES}
                if all("complete" in c[side] for c in group for side in SIDES)
                else None,
                "stall_causes": pooled_causes(group),
                "retx_loss_recovery_ms_p95": retx_p95
                | {"ratio": ratio(retx_p95["autorec"], retx_p95["baseline"])}
                | {f"n_{side}": len(values) for side, values in retx.items()}
                | {"ratio_interval95": p95_ratio_interval(group)},
                "retx_loss_recovery_p95_ratio_per_draw": {"min": min(p95), "max": max(p95)} if p95 else None,
                # Lost retransmissions recovered in two RTTs or more: a copy gets one acknowledged
                # about an RTT after it left, another loss-detection round takes over two. The
                # p95 flips from the first to the second once this share passes 5 %.
                "retx_loss_over_2rtt": {
                    side: round(sum(v >= 2 * rtt for v in values) / len(values), 4) if values else None
                    for side, values in retx.items()
                },
                "overhead": {
                    "all": round(sum(c["autorec"]["copy_bytes"] for c in group) / goodput, 5) if goodput else 0.0,
                    "min": min(overhead),
                    "max": max(overhead),
                },
            }
        )
    return out


# Fewer draws give a percentile bootstrap interval narrower than the truth.
MIN_DRAWS_FOR_INTERVAL = 10


def stall_ratio_interval(group: list[dict[str, Any]], resamples: int = 10_000) -> list[float] | None:
    """95 % bootstrap interval of the pooled stall ratio: whole draws resampled with
    replacement (both sides of a draw together), a fixed seed so a file always gives the
    same interval. None under MIN_DRAWS_FOR_INTERVAL draws or without baseline stall."""
    base = np.array([c["baseline"]["stall_s"] for c in group])
    auto = np.array([c["autorec"]["stall_s"] for c in group])
    if len(group) < MIN_DRAWS_FOR_INTERVAL or base.sum() == 0:
        return None
    draws = np.random.default_rng(0).integers(0, len(group), size=(resamples, len(group)))
    b, a = base[draws].sum(axis=1), auto[draws].sum(axis=1)
    ratios = a[b > 0] / b[b > 0]
    return [round(float(np.percentile(ratios, q)), 3) for q in (2.5, 97.5)]


def p95_ratio_interval(group: list[dict[str, Any]], resamples: int = 10_000) -> list[float] | None:
    """95 % bootstrap interval of the pooled retransmission-loss p95 ratio, resampled as
    stall_ratio_interval resamples (whole draws, both sides together, a fixed seed).

    A draw has a handful of lost retransmissions, and the p95 flips between the copy path
    (about one RTT) and another loss-detection round once 5 % of them take the second, so the
    pooled ratio can sit on that edge; this says how far it is. Resamples without a lost
    retransmission on a side are left out. None under MIN_DRAWS_FOR_INTERVAL draws."""
    if len(group) < MIN_DRAWS_FOR_INTERVAL:
        return None
    values = {side: [np.asarray(c[side].get("retx_loss_recovery_ms", []), float) for c in group] for side in SIDES}
    draws = np.random.default_rng(0).integers(0, len(group), size=(resamples, len(group)))
    ratios = []
    for row in draws:
        base, auto = (np.concatenate([values[side][i] for i in row]) for side in SIDES)
        if base.size and auto.size and (b := np.percentile(base, 95)) > 0:
            ratios.append(np.percentile(auto, 95) / b)
    if not ratios:
        return None
    return [round(float(np.percentile(ratios, q)), 3) for q in (2.5, 97.5)]


def pooled_causes(group: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]] | None:
    """Stall count and time per cause (attribution.py), summed over the draws, per side,
    and "cut short" for the frozen rest of streams that did not finish (it has no critical
    byte to blame), so the causes add up to ``stall_s``; None where the runs carry no
    attribution (real clock)."""
    if not all("stall_causes" in c[side] and "unfinished_stall_s" in c[side] for c in group for side in SIDES):
        return None

    def summed(counts: list[dict[str, float]]) -> dict[str, float]:
        return {"stalls": sum(c["stalls"] for c in counts), "stall_s": round(sum(c["stall_s"] for c in counts), 4)}

    out: dict[str, dict[str, dict[str, float]]] = {}
    for side in SIDES:
        causes = [c[side]["stall_causes"] for c in group]
        out[side] = {cause: summed([c[cause] for c in causes]) for cause in CAUSES}
        if all("first loss split" in c for c in causes):
            out[side]["first loss split"] = {
                split: summed([c["first loss split"][split] for c in causes]) for split in FIRST_LOSS_SPLIT
            }
        out[side]["cut short"] = {
            "stalls": sum(c[side]["unfinished_stall_s"] > 0 for c in group),
            "stall_s": round(sum(c[side]["unfinished_stall_s"] for c in group), 4),
        }
    return out


def p95_ms(values_ms: list[float]) -> float | None:
    return round(float(np.percentile(values_ms, 95)), 1) if values_ms else None


def run_loss_change(
    *,
    duration_s: float,
    rtt_ms: float,
    autorec: AutoRecConfig,
    source: SourceConfig,
    playout_delay_s: float,
    rate_mbps: float,
    losses: tuple[float, float, float] = (0.01, 0.10, 0.01),
    virtual: bool = False,
    congestion_control: str = DEFAULT_CONGESTION_CONTROL,
) -> dict[str, Any]:
    """AutoRec on a link whose loss changes at a third and two thirds of the stream."""
    third = duration_s / 3
    steps = ((0.0, losses[0]), (third, losses[1]), (2 * third, losses[2]))
    spec = SideSpec(
        LinkSpec(loss=losses[0], loss_model="bernoulli", rtt_ms=rtt_ms, rate_mbps=rate_mbps),
        autorec,
        duration_s,
        source,
        playout_delay_s,
        loss_steps=steps,
        virtual=virtual,
        congestion_control=congestion_control,
    )
    with ProcessPoolExecutor(max_workers=1) as pool:
        result = pool.submit(_run_side_in_process, spec).result()
    return {
        "rtt_ms": rtt_ms,
        "duration_s": duration_s,
        "clock": "virtual" if virtual else "real",
        "loss_steps": [list(s) for s in steps],
        **_settings(autorec, source, playout_delay_s, rate_mbps, congestion_control),
        "autorec": result,
    }


def write_json(path: str | Path, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
