"""Link profiles: what a link does to packets, and how that changes over time.

A :class:`LinkProfile` is plain data — one-way delay, jitter, a rate limit with a bounded queue and a
loss model. A :class:`Schedule` lists the profile in force from each instant on; every API that takes
a profile also takes a schedule. :data:`PROFILES` names a few links people ask for, with the
assumptions behind their numbers.

Three loss models: :class:`Bernoulli` (independent losses), and two bursty Gilbert–Elliott chains
that differ in what a burst is made of. :class:`GilbertElliott` moves once per *packet*, so a burst
lasts a number of packets however far apart they are sent — right for a channel whose errors come
with the traffic (e.g. a codec or FEC block failing), and what netem's ``loss gemodel`` does.
:class:`GilbertElliottTime` moves in *time*, so a burst lasts a number of milliseconds whatever the
packet rate — right for fading, handover or interference, which do not wait for the sender. The
difference shows with sparse traffic: a sender that backs off to one packet every few seconds sees a
3-packet burst as a long outage under the first, but nearly independent losses under the second.

The emulator exists because this kernel has no ``netem`` qdisc; the parameters mirror Linux netem's
(``delay``, ``jitter``, ``rate``, ``limit``, ``loss random`` / ``loss gemodel``) so results carry over.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeGuard


def _is_number(value: object) -> TypeGuard[float]:
    """An int or float, but not a bool: JSON's ``true`` would otherwise pass as 1."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_probability(owner: str, name: str, value: float) -> None:
    if not (_is_number(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{owner}.{name} must be a probability in [0, 1], got {value!r}")


def _check_state_losses(owner: str, model: GilbertElliott | GilbertElliottTime) -> None:
    """Both Gilbert–Elliott chains lose a packet with a probability per state."""
    for name in ("loss_in_good", "loss_in_bad"):
        _check_probability(owner, name, getattr(model, name))


def _check_loss_rate(owner: str, loss_rate: float) -> None:
    """A long-run loss rate for ``from_mean``: 1 is excluded, since it needs a bad state never left."""
    if not (_is_number(loss_rate) and 0.0 <= loss_rate < 1.0):
        raise ValueError(f"{owner} loss_rate must be in [0, 1), got {loss_rate!r}")


def _stationary_loss(bad_share: float, loss_in_good: float, loss_in_bad: float) -> float:
    """Long-run loss rate of a two-state chain that spends ``bad_share`` of the packets (or of the
    time) in the bad state: the state losses weighted by the stationary distribution."""
    return (1.0 - bad_share) * loss_in_good + bad_share * loss_in_bad


@dataclass(frozen=True)
class Bernoulli:
    """Independent loss: every packet is lost with probability ``p``."""

    p: float

    def __post_init__(self) -> None:
        _check_probability("Bernoulli", "p", self.p)

    @property
    def mean_loss(self) -> float:
        return self.p

    def describe(self) -> str:
        return f"{_percent(self.p)} loss, independent (Bernoulli)"


@dataclass(frozen=True)
class GilbertElliott:
    """Bursty loss: a two-state Markov chain (good, bad) with a loss probability per state.

    Each packet is lost with the probability of the current state, then the chain moves
    (good→bad with ``p_good_to_bad``, bad→good with ``p_bad_to_good``). With the defaults
    ``loss_in_good=0`` and ``loss_in_bad=1`` this is Gilbert's original model, where a stay in the
    bad state is a loss burst of mean length ``1 / p_bad_to_good`` packets.
    """

    p_good_to_bad: float
    p_bad_to_good: float
    loss_in_good: float = 0.0
    loss_in_bad: float = 1.0

    def __post_init__(self) -> None:
        for name in ("p_good_to_bad", "p_bad_to_good"):
            _check_probability("GilbertElliott", name, getattr(self, name))
        _check_state_losses("GilbertElliott", self)
        if self.p_bad_to_good == 0.0 and self.p_good_to_bad > 0.0:
            raise ValueError(
                "GilbertElliott.p_bad_to_good must be > 0 when p_good_to_bad > 0 (otherwise the bad state is absorbing)"
            )

    @classmethod
    def from_mean(cls, loss_rate: float, burst_len: float) -> GilbertElliott:
        """The Gilbert chain whose long-run loss rate is ``loss_rate`` in bursts of mean ``burst_len``.

        With ``loss_in_bad=1`` and ``loss_in_good=0``: a burst is a stay in the bad state, so
        ``p_bad_to_good = 1 / burst_len``; the stationary bad-state share ``p / (p + r)`` equals the
        loss rate, so ``p_good_to_bad = loss_rate * r / (1 - loss_rate)``.
        """
        _check_loss_rate("GilbertElliott", loss_rate)
        if not (_is_number(burst_len) and burst_len >= 1.0):
            raise ValueError(f"GilbertElliott burst_len must be >= 1 packet, got {burst_len!r}")
        to_good = 1.0 / burst_len
        to_bad = loss_rate * to_good / (1.0 - loss_rate)
        if to_bad > 1.0:
            raise ValueError(
                f"GilbertElliott: loss_rate {loss_rate} with burst_len {burst_len} needs "
                f"p_good_to_bad = {to_bad:.3f} > 1; use a longer burst_len"
            )
        return cls(p_good_to_bad=to_bad, p_bad_to_good=to_good)

    @property
    def bad_share(self) -> float:
        """Stationary probability of the bad state: the share of packets sent in it. A chain that
        never moves stays in the good state it starts in."""
        moving = self.p_good_to_bad + self.p_bad_to_good
        return 0.0 if moving == 0.0 else self.p_good_to_bad / moving

    @property
    def mean_loss(self) -> float:
        """Long-run loss rate: state losses weighted by the chain's stationary distribution."""
        return _stationary_loss(self.bad_share, self.loss_in_good, self.loss_in_bad)

    @property
    def mean_burst_len(self) -> float:
        """Mean stay in the bad state, in packets."""
        return math.inf if self.p_bad_to_good == 0.0 else 1.0 / self.p_bad_to_good

    def describe(self) -> str:
        text = f"{_percent(self.mean_loss)} loss in bursts of {self.mean_burst_len:.3g} packets (Gilbert-Elliott)"
        return text + _state_losses(self)


@dataclass(frozen=True)
class GilbertElliottTime:
    """Bursty loss in time: a continuous-time two-state Markov chain (good, bad).

    The chain stays in the good state for an exponentially distributed time of mean
    ``mean_good_ms``, then in the bad state for one of mean ``mean_bad_ms``, and so on; a packet is
    lost with the probability of the state the chain is in when the packet is sent. Unlike
    :class:`GilbertElliott`, the state does not move with packets, so a burst is a stretch of time:
    packets sent far apart compared with ``mean_bad_ms`` see nearly independent losses, and
    back-to-back packets share their fate. ``mean_good_ms=math.inf`` is a chain that never turns bad
    (what :meth:`from_mean` gives for a zero loss rate); the bad state must be left in finite time.
    """

    mean_good_ms: float
    mean_bad_ms: float
    loss_in_good: float = 0.0
    loss_in_bad: float = 1.0

    def __post_init__(self) -> None:
        good, bad = self.mean_good_ms, self.mean_bad_ms
        if not (_is_number(good) and good > 0.0):  # NaN fails the comparison too
            raise ValueError(f"GilbertElliottTime.mean_good_ms must be > 0 (math.inf: never bad), got {good!r}")
        if not (_is_number(bad) and math.isfinite(bad) and bad > 0.0):
            raise ValueError(
                f"GilbertElliottTime.mean_bad_ms must be a finite number > 0 "
                f"(otherwise the bad state is absorbing), got {bad!r}"
            )
        _check_state_losses("GilbertElliottTime", self)

    @classmethod
    def from_mean(cls, loss_rate: float, burst_ms: float) -> GilbertElliottTime:
        """The chain whose long-run loss rate is ``loss_rate`` in bursts of mean ``burst_ms``.

        With ``loss_in_bad=1`` and ``loss_in_good=0`` the loss rate is the share of time spent in
        the bad state, ``a / (a + b)`` for rates ``a`` (good→bad) and ``b`` (bad→good). A burst is a
        stay in the bad state, so ``b = 1 / burst_ms`` and ``a = loss_rate * b / (1 - loss_rate)``;
        the mean stay in the good state is ``1 / a = burst_ms * (1 - loss_rate) / loss_rate``.
        """
        _check_loss_rate("GilbertElliottTime", loss_rate)
        if not (_is_number(burst_ms) and math.isfinite(burst_ms) and burst_ms > 0.0):
            raise ValueError(f"GilbertElliottTime burst_ms must be a finite number > 0, got {burst_ms!r}")
        to_good = 1.0 / burst_ms
        to_bad = loss_rate * to_good / (1.0 - loss_rate)
        return cls(mean_good_ms=math.inf if to_bad == 0.0 else 1.0 / to_bad, mean_bad_ms=float(burst_ms))

    @property
    def bad_share(self) -> float:
        """Stationary probability of the bad state: the share of time the chain spends in it."""
        if math.isinf(self.mean_good_ms):
            return 0.0
        return self.mean_bad_ms / (self.mean_good_ms + self.mean_bad_ms)

    @property
    def mean_loss(self) -> float:
        """Long-run loss rate: state losses weighted by the chain's stationary distribution.

        For packets sent at any times independent of the chain (each one sees the stationary
        distribution), so it holds at every packet rate.
        """
        return _stationary_loss(self.bad_share, self.loss_in_good, self.loss_in_bad)

    @property
    def mean_burst_ms(self) -> float:
        """Mean stay in the bad state, in ms."""
        return self.mean_bad_ms

    def describe(self) -> str:
        text = f"{_percent(self.mean_loss)} loss in bursts of {self.mean_burst_ms:.3g} ms (Gilbert-Elliott in time)"
        return text + _state_losses(self)

    def p_switch(self, bad: bool, elapsed_s: float) -> float:
        """Probability that the chain is in the other state ``elapsed_s`` seconds after being in
        state ``bad`` (the state at the same distance *before*, too: a two-state chain is reversible).

        With rates ``a = 1/mean_good``, ``b = 1/mean_bad`` and ``π = a / (a + b)``,
        ``P(bad after dt) = π + (x - π)·exp(-(a + b)·dt)`` for ``x = 1`` if bad, else 0; so the chance
        of having switched is ``π·(1 - e)`` from good and ``(1 - π)·(1 - e)`` from bad, written with
        ``expm1`` to stay exact at ``dt = 0`` and accurate for small ``dt``.
        """
        rate_per_s = 1e3 / self.mean_bad_ms + 1e3 / self.mean_good_ms  # 1e3 / inf is 0: never bad
        moved = -math.expm1(-rate_per_s * abs(elapsed_s))
        share = self.bad_share
        return (1.0 - share) * moved if bad else share * moved


LossModel = Bernoulli | GilbertElliott | GilbertElliottTime


def _percent(p: float) -> str:
    return f"{p * 100:.3g}%"


def _state_losses(model: GilbertElliott | GilbertElliottTime) -> str:
    """The per-state loss probabilities, where they are not Gilbert's 0 in good and 1 in bad."""
    if (model.loss_in_good, model.loss_in_bad) == (0.0, 1.0):
        return ""
    return f", losing {_percent(model.loss_in_good)} in the good state and {_percent(model.loss_in_bad)} in the bad"

DEFAULT_QUEUE_BYTES = 256 * 1024
DEFAULT_BURST_LEN = 3.0
DEFAULT_BURST_MS = 20.0


@dataclass(frozen=True)
class LinkProfile:
    """What one direction of a link does to packets.

    ``delay_ms``: one-way propagation delay. ``jitter_ms``: each packet's delay varies uniformly in
    ``±jitter_ms`` (as netem's default); packets still leave in order unless ``allow_reorder``.
    ``rate_mbps``: serialisation rate in Mbit/s (``None``: unlimited) in front of a FIFO of at most
    ``queue_bytes`` (tail drop). ``loss``: ``None``, a probability (Bernoulli shorthand), or a
    :class:`Bernoulli` / :class:`GilbertElliott` / :class:`GilbertElliottTime` model.
    """

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    rate_mbps: float | None = None
    queue_bytes: int = DEFAULT_QUEUE_BYTES
    loss: LossModel | float | None = None
    allow_reorder: bool = False

    def __post_init__(self) -> None:
        for name in ("delay_ms", "jitter_ms"):
            value = getattr(self, name)
            if not (_is_number(value) and math.isfinite(value) and value >= 0.0):
                raise ValueError(f"LinkProfile.{name} must be a finite number >= 0, got {value!r}")
        if self.rate_mbps is not None and not (
            _is_number(self.rate_mbps) and math.isfinite(self.rate_mbps) and self.rate_mbps > 0
        ):
            raise ValueError(f"LinkProfile.rate_mbps must be > 0 or None (unlimited), got {self.rate_mbps!r}")
        if not (isinstance(self.queue_bytes, int) and not isinstance(self.queue_bytes, bool) and self.queue_bytes >= 1):
            raise ValueError(f"LinkProfile.queue_bytes must be an integer >= 1, got {self.queue_bytes!r}")
        if _is_number(self.loss):
            _check_probability("LinkProfile", "loss", self.loss)
            object.__setattr__(self, "loss", Bernoulli(float(self.loss)) if self.loss > 0 else None)
        elif self.loss is not None and not isinstance(self.loss, Bernoulli | GilbertElliott | GilbertElliottTime):
            raise ValueError(
                f"LinkProfile.loss must be None, a probability, Bernoulli, GilbertElliott or "
                f"GilbertElliottTime, got {self.loss!r}"
            )

    @property
    def rate_bytes_per_s(self) -> float | None:
        return None if self.rate_mbps is None else self.rate_mbps * 1e6 / 8.0

    def describe(self) -> str:
        """The profile as one readable line: ``delay 50 ms, no jitter, ... 5% loss in bursts of ...``."""
        parts = [f"delay {self.delay_ms:g} ms"]
        parts.append(f"jitter ±{self.jitter_ms:g} ms" if self.jitter_ms else "no jitter")
        if self.rate_mbps is None:
            parts.append("unlimited rate")
        else:
            parts.append(f"rate {self.rate_mbps:g} Mbit/s, queue {self.queue_bytes} bytes")
        if self.allow_reorder:
            parts.append("reordering allowed")
        loss = self.loss
        described = isinstance(loss, Bernoulli | GilbertElliott | GilbertElliottTime)
        parts.append(loss.describe() if described else "no loss")
        return ", ".join(parts)


class Schedule:
    """Profiles over time: ``Schedule([(0, a), (10, b)])`` is ``a`` for 10 s, then ``b`` for good.

    Times are seconds since the link started; the first entry must be at 0 and times must increase.
    """

    def __init__(self, entries: Iterable[tuple[float, LinkProfile]]) -> None:
        self.entries: tuple[tuple[float, LinkProfile], ...] = tuple((float(t), p) for t, p in entries)
        if not self.entries:
            raise ValueError("Schedule needs at least one (time, profile) entry")
        if self.entries[0][0] != 0.0:
            raise ValueError(f"Schedule must start at t=0, got first entry at t={self.entries[0][0]}")
        for (earlier, _), (later, _) in zip(self.entries, self.entries[1:], strict=False):
            if not later > earlier:
                raise ValueError(f"Schedule times must increase strictly, got {earlier} then {later}")
        for _, profile in self.entries:
            if not isinstance(profile, LinkProfile):
                raise ValueError(f"Schedule entries must hold LinkProfile, got {profile!r}")
        self._times = [t for t, _ in self.entries]

    def at(self, elapsed: float) -> LinkProfile:
        """The profile in force ``elapsed`` seconds after the start (the first one before it)."""
        index = bisect.bisect_right(self._times, elapsed) - 1
        return self.entries[max(index, 0)][1]

    def __repr__(self) -> str:
        return f"Schedule({list(self.entries)!r})"

    def describe(self) -> str:
        """One readable line per entry: ``from 0 s: delay 50 ms, ...``."""
        return "\n".join(f"from {t:g} s: {profile.describe()}" for t, profile in self.entries)

    @classmethod
    def from_json(cls, source: str | Path | list[Any]) -> Schedule:
        """A schedule from JSON: a list of ``{"at_s": T, <profile fields>}`` objects.

        Profile fields are :func:`profile_from_dict`'s; ``"profile": "wifi"`` starts from a named one.
        """
        data = json.loads(Path(source).read_text()) if isinstance(source, str | Path) else source
        if not isinstance(data, list):
            raise ValueError('schedule JSON must be a list of {"at_s": seconds, ...profile fields} objects')
        entries = []
        for index, item in enumerate(data):
            if not isinstance(item, dict) or "at_s" not in item:
                raise ValueError(f'schedule entry {index} must be an object with "at_s", got {item!r}')
            if not (_is_number(item["at_s"]) and math.isfinite(item["at_s"])):
                raise ValueError(
                    f'schedule entry {index}: "at_s" must be a finite number of seconds, got {item["at_s"]!r}'
                )
            fields_only = {k: v for k, v in item.items() if k != "at_s"}
            entries.append((item["at_s"], profile_from_dict(fields_only)))
        return cls(entries)


ProfileLike = LinkProfile | Schedule


def as_schedule(profile: ProfileLike) -> Schedule:
    if isinstance(profile, Schedule):
        return profile
    if isinstance(profile, LinkProfile):
        return Schedule([(0.0, profile)])
    raise TypeError(f"expected a LinkProfile or Schedule, got {profile!r}")


LOSS_MODEL_NAMES = ("bernoulli", "gilbert-elliott", "gilbert-elliott-time")
"""The ``"model"`` names of :func:`loss_from_dict`, also the CLI's ``--loss-model`` choices."""


def _from_mean_spec(model: str, rest: Mapping[str, Any], burst_key: str, default_burst: float) -> tuple[Any, Any]:
    # A misspelt or the other model's burst key (burst_len vs burst_ms) would otherwise be
    # ignored silently, leaving the default burst in place.
    unknown = set(rest) - {"mean", burst_key}
    if unknown:
        raise ValueError(
            f'loss model {model!r} given by "mean" takes only "mean" and "{burst_key}", '
            f"got unknown key(s) {sorted(unknown)}"
        )
    return rest["mean"], rest.get(burst_key, default_burst)


def _from_fields(model: str, cls: type[LossModel], rest: Mapping[str, Any], burst_key: str | None = None) -> Any:
    # A bad key would otherwise be a TypeError from the constructor, which names neither the JSON
    # model nor what it takes.
    names = [f.name for f in fields(cls)]
    required = [f.name for f in fields(cls) if f.default is MISSING]
    if burst_key is not None and burst_key in rest:
        raise ValueError(
            f'loss model {model!r}: "{burst_key}" needs "mean" (the long-run loss rate) beside it; '
            f"or give the chain by its fields {names}"
        )
    problems = []
    if unknown := sorted(set(rest) - set(names)):
        problems.append(f"unknown key(s) {unknown}")
    if missing := [name for name in required if name not in rest]:
        problems.append(f"missing key(s) {missing}")
    if problems:
        alternative = f' (or "mean" and "{burst_key}")' if burst_key is not None else ""
        raise ValueError(f"loss model {model!r} takes {names}{alternative}; {', '.join(problems)}")
    return cls(**rest)


def loss_from_dict(spec: float | Mapping[str, Any] | None) -> LossModel | None:
    """``0.01`` (Bernoulli), ``{"model": "bernoulli", "p": 0.01}``, a packet-counted Gilbert–Elliott
    chain as ``{"model": "gilbert-elliott", "mean": 0.05, "burst_len": 3}`` or by its four
    probabilities, or a time-based one as ``{"model": "gilbert-elliott-time", "mean": 0.05,
    "burst_ms": 20}`` or by its fields (``mean_good_ms``, ``mean_bad_ms``, ...)."""
    if spec is None:
        return None
    if isinstance(spec, int | float):  # a bool too, so that _check_probability refuses it
        _check_probability("loss", "p", spec)
        return Bernoulli(float(spec)) if spec > 0 else None
    if not isinstance(spec, Mapping):
        raise ValueError(f'loss must be a probability, an object with "model", or null, got {spec!r}')
    model = spec.get("model", "bernoulli")
    rest = {k: v for k, v in spec.items() if k != "model"}
    if model == "bernoulli":
        return _from_fields(model, Bernoulli, rest)
    if model == "gilbert-elliott":
        if "mean" in rest:
            return GilbertElliott.from_mean(*_from_mean_spec(model, rest, "burst_len", DEFAULT_BURST_LEN))
        return _from_fields(model, GilbertElliott, rest, "burst_len")
    if model == "gilbert-elliott-time":
        if "mean" in rest:
            return GilbertElliottTime.from_mean(*_from_mean_spec(model, rest, "burst_ms", DEFAULT_BURST_MS))
        return _from_fields(model, GilbertElliottTime, rest, "burst_ms")
    names = ", ".join(repr(name) for name in LOSS_MODEL_NAMES)
    raise ValueError(f"loss model must be one of {names}, got {model!r}")


def profile_from_dict(spec: Mapping[str, Any]) -> LinkProfile:
    """A profile from plain data (JSON): LinkProfile's fields, ``loss`` as in :func:`loss_from_dict`,
    and optionally ``"profile": NAME`` to start from :data:`PROFILES`."""
    spec = dict(spec)
    base_name = spec.pop("profile", None)
    if base_name is not None and base_name not in PROFILES:
        raise ValueError(f"unknown profile {base_name!r}; known: {', '.join(sorted(PROFILES))}")
    known = {f.name for f in fields(LinkProfile)}
    unknown = set(spec) - known
    if unknown:
        raise ValueError(f"unknown link profile field(s) {sorted(unknown)}; allowed: {sorted(known)}")
    if "loss" in spec:
        spec["loss"] = loss_from_dict(spec["loss"])
    base = PROFILES[base_name] if base_name is not None else LinkProfile()
    return replace(base, **spec)


WIFI = LinkProfile(delay_ms=2.0, jitter_ms=1.0, rate_mbps=50.0, queue_bytes=256 * 1024, loss=Bernoulli(0.001))
"""An indoor 802.11n/ac WLAN hop with a good signal.

Assumptions: a few ms RTT (one-way 2 ms ± 1 ms: an idle, good-signal hop; contention in busy
WLANs raises this to tens of ms, see Sui et al., MobiSys 2016, on WLAN latency), 50 Mbit/s of usable
throughput (what a 2x2 802.11ac client typically gets, well below the PHY rate), 0.1% residual
loss after link-layer retries, and a 256 KiB (~40 ms at 50 Mbit/s) access-point buffer.
"""

LTE = LinkProfile(delay_ms=25.0, jitter_ms=5.0, rate_mbps=20.0, queue_bytes=512 * 1024, loss=Bernoulli(0.005))
"""A loaded 4G/LTE cell: ~50 ms RTT, 20 Mbit/s, 0.5% loss, and the deep base-station buffers
LTE is known for (512 KiB, ~200 ms at 20 Mbit/s). Assumed typical values, not a measured trace."""

SATELLITE_GEO = LinkProfile(
    delay_ms=280.0, jitter_ms=10.0, rate_mbps=10.0, queue_bytes=1024 * 1024, loss=Bernoulli(0.005)
)
"""A geostationary satellite hop: ~560 ms RTT (physics: 2 x 35,786 km up and down is ~480 ms, plus
ground segment), 10 Mbit/s, 0.5% loss. Assumed typical consumer-terminal values."""

TACTICAL_RADIO = LinkProfile(
    delay_ms=200.0,
    jitter_ms=40.0,
    rate_mbps=0.128,
    queue_bytes=32 * 1024,
    loss=GilbertElliott.from_mean(0.01, burst_len=3.0),
)
"""A narrowband tactical (VHF/UHF) data radio net: 100x Wi-Fi's latency, 128 kbit/s, bursty loss.

Assumptions: one-way 200 ms ± 40 ms (TDMA/CSMA channel access and forward error correction
dominate, giving hundreds of ms; 100x the Wi-Fi profile's 2 ms), 128 kbit/s, the middle of the
64–256 kbit/s range of current narrowband waveforms (legacy VHF combat-net radio data is 16 kbit/s,
wideband networking waveforms reach Mbit/s); 1% residual loss in bursts of 3 packets on average
(fading), and a 32 KiB (~2 s) radio buffer. Assumed representative values, not a measured trace.
"""

PROFILES: dict[str, LinkProfile] = {
    "wifi": WIFI,
    "lte": LTE,
    "satellite-geo": SATELLITE_GEO,
    "tactical-radio": TACTICAL_RADIO,
}
