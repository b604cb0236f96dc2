"""NetGPT's routing rule (arXiv 2511.22217, Sec. III): answer at the edge, or fall back to the
cloud when the edge agent's score is below a threshold that the network and the prices set.

No I/O here: the network state, the prices and the request's size come in, a decision goes out.

**Notation** (docs/netgpt.md derives it). A request ``x`` is answered by the edge agent first; its
answer gets a score ``s(x)`` in [0, 1]. ``p_e(s)`` is the probability that the edge answer is
correct given its score, ``p_c(s)`` that the cloud's is, both estimated on calibration data
(isotonic in ``s``). Falling back costs ``D = price_tokens * tokens + price_latency * L_c``
with the cloud's latency ``L_c = k * RTT + 8 * bytes / B + T_cloud`` (``k`` round trips per
request, ``bytes`` up and down, ``B`` the bandwidth, ``T_cloud`` the cloud's compute time); a
correct answer is worth ``V``. The edge's own cost is paid either way (the score needs its
answer), so the router falls back iff the gain in expected value exceeds the cost:

    V * (p_c(s) - p_e(s)) > D    <=>    h(s) := p_c(s) - p_e(s) > D / V

Under the regularity assumption that ``h`` is non-increasing in ``s`` (a more confident edge
gains less from the cloud), the set of scores that fall back is ``[0, tau*)`` with the unique

    tau*(B, RTT) = inf { s in [0, 1] : h(s) <= D(B, RTT) / V }

``D`` grows with RTT and falls with B, and ``h^-1`` is non-increasing, so tau* is non-increasing
in RTT and non-decreasing in bandwidth (tested with hypothesis in tests/edge/netgpt).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class NetworkState:
    """The edge-to-cloud path as measured: bandwidth (Mbit/s) and round-trip time (ms)."""

    bandwidth_mbps: float
    rtt_ms: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.bandwidth_mbps) and self.bandwidth_mbps > 0):
            raise ValueError(f"bandwidth_mbps must be a finite number > 0, got {self.bandwidth_mbps}")
        if not (math.isfinite(self.rtt_ms) and self.rtt_ms >= 0):
            raise ValueError(f"rtt_ms must be a finite number >= 0, got {self.rtt_ms}")


@dataclass(frozen=True)
class PriceSchedule:
    """What the cloud costs, in the units a correct answer is worth (``value_per_success``).

    ``cloud_per_1k_tokens``: the cloud's price per 1,000 tokens (prompt + completion);
    ``latency_per_s``: what a second of waiting costs the user; ``round_trips``: round trips a
    cloud request takes (TCP and TLS handshakes and the request itself; 1 on a kept-alive
    connection). Peak and off-peak prices are two schedules (``hours``: when this one applies)."""

    name: str
    cloud_per_1k_tokens: float
    latency_per_s: float
    value_per_success: float = 1.0
    round_trips: float = 1.0
    hours: tuple[int, int] = (0, 24)

    def __post_init__(self) -> None:
        for name in ("cloud_per_1k_tokens", "latency_per_s", "round_trips"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"price {self.name!r}: {name} must be a finite number >= 0, got {value}")
        if not (math.isfinite(self.value_per_success) and self.value_per_success > 0):
            raise ValueError(f"price {self.name!r}: value_per_success must be > 0, got {self.value_per_success}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PriceSchedule:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"price schedule: unknown fields {unknown} (known: {sorted(cls.__dataclass_fields__)})")
        if "hours" in known:
            known["hours"] = tuple(known["hours"])
        return cls(**known)


# Named schedules for benchmarks: cheap, standard and expensive cloud time, in units where a
# correct answer is worth 1; ``relaxed`` is a latency-tolerant agent (a correct answer is worth
# 100 s of waiting), the one schedule in which falling back stays worth it when the cloud's own
# compute takes seconds, as it does on a loaded 2-core CPU (docs/netgpt.md, section 4).
PRICES: dict[str, PriceSchedule] = {
    "relaxed": PriceSchedule("relaxed", cloud_per_1k_tokens=0.02, latency_per_s=0.01),
    "cheap": PriceSchedule("cheap", cloud_per_1k_tokens=0.02, latency_per_s=0.05),
    "standard": PriceSchedule("standard", cloud_per_1k_tokens=0.10, latency_per_s=0.20),
    "premium": PriceSchedule("premium", cloud_per_1k_tokens=0.30, latency_per_s=0.50),
}


@dataclass(frozen=True)
class RequestSize:
    """What a fallback sends and receives."""

    request_bytes: int
    response_bytes: int
    tokens: int


def cloud_latency_s(state: NetworkState, size: RequestSize, cloud_compute_s: float, round_trips: float = 1.0) -> float:
    """``L_c = k * RTT + 8 * bytes / B + T_cloud``."""
    transfer = 8.0 * (size.request_bytes + size.response_bytes) / (state.bandwidth_mbps * 1e6)
    return round_trips * state.rtt_ms / 1e3 + transfer + cloud_compute_s


def fallback_cost(state: NetworkState, price: PriceSchedule, size: RequestSize, cloud_compute_s: float) -> float:
    """``D``: what falling back to the cloud costs beyond the edge answer already paid for."""
    latency = cloud_latency_s(state, size, cloud_compute_s, price.round_trips)
    return price.cloud_per_1k_tokens * size.tokens / 1e3 + price.latency_per_s * latency


def isotonic(x: Sequence[float], y: Sequence[float], increasing: bool = True) -> tuple[list[float], list[float]]:
    """Pool-adjacent-violators: the monotone least-squares fit of ``y`` on ``x``, as knots
    (block means of ``x``, fitted values)."""
    pairs = sorted(zip(x, y, strict=True))
    blocks: list[list[float]] = []  # [sum_x, sum_y, n]
    for xi, yi in pairs:
        blocks.append([xi, yi if increasing else -yi, 1.0])
        while len(blocks) > 1 and blocks[-2][1] / blocks[-2][2] > blocks[-1][1] / blocks[-1][2]:
            a = blocks.pop()
            blocks[-1] = [blocks[-1][0] + a[0], blocks[-1][1] + a[1], blocks[-1][2] + a[2]]
    knots = [b[0] / b[2] for b in blocks]
    values = [(b[1] if increasing else -b[1]) / b[2] for b in blocks]
    return knots, values


def _interpolate(knots: Sequence[float], values: Sequence[float], s: float) -> float:
    if not knots:
        return 0.0
    if s <= knots[0]:
        return values[0]
    if s >= knots[-1]:
        return values[-1]
    i = bisect.bisect_right(knots, s)
    x0, x1, y0, y1 = knots[i - 1], knots[i], values[i - 1], values[i]
    return y0 if x1 == x0 else y0 + (y1 - y0) * (s - x0) / (x1 - x0)


@dataclass
class Calibration:
    """``p_e(s)`` (non-decreasing) and ``p_c(s)`` (non-increasing) as isotonic fits of observed
    successes against the edge score; ``h(s) = p_c(s) - p_e(s)`` is then non-increasing, which is
    the regularity the threshold's uniqueness and monotonicity rest on."""

    edge_knots: list[float] = field(default_factory=list)
    edge_values: list[float] = field(default_factory=list)
    cloud_knots: list[float] = field(default_factory=list)
    cloud_values: list[float] = field(default_factory=list)
    num_samples: int = 0

    @classmethod
    def fit(cls, scores: Sequence[float], edge_ok: Sequence[bool], cloud_ok: Sequence[bool]) -> Calibration:
        if not scores:
            raise ValueError("calibration needs at least one scored request")
        ek, ev = isotonic(scores, [float(v) for v in edge_ok], increasing=True)
        ck, cv = isotonic(scores, [float(v) for v in cloud_ok], increasing=False)
        return cls(ek, ev, ck, cv, len(scores))

    def p_edge(self, s: float) -> float:
        return _interpolate(self.edge_knots, self.edge_values, s)

    def p_cloud(self, s: float) -> float:
        return _interpolate(self.cloud_knots, self.cloud_values, s)

    def gain(self, s: float) -> float:
        """``h(s) = p_c(s) - p_e(s)``: what the cloud adds at score ``s``."""
        return self.p_cloud(s) - self.p_edge(s)

    def threshold(self, cost_ratio: float, resolution: int = 1000) -> float:
        """``tau* = inf { s : h(s) <= D / V }`` on a grid of ``resolution`` steps (0: never fall
        back, 1: always). ``h`` is non-increasing, so a binary search finds it."""
        if self.gain(0.0) <= cost_ratio:
            return 0.0
        lo, hi = 0, resolution  # invariant: gain(lo/res) > ratio
        if self.gain(1.0) > cost_ratio:
            return 1.0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.gain(mid / resolution) > cost_ratio:
                lo = mid
            else:
                hi = mid
        return hi / resolution

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**data)


@dataclass(frozen=True)
class Decision:
    route: str  # "edge" | "cloud"
    score: float
    threshold: float
    cost_ratio: float
    cloud_latency_s: float


@dataclass
class NetGPTPolicy:
    """The dynamic threshold: ``decide`` for one request, given the network and prices now."""

    calibration: Calibration
    cloud_compute_s: float = 1.0  # the cloud's own answer time, refreshed from observed requests

    def threshold(self, state: NetworkState, price: PriceSchedule, size: RequestSize) -> float:
        return self.calibration.threshold(fallback_cost(state, price, size, self.cloud_compute_s)
                                          / price.value_per_success)

    def decide(self, score: float, state: NetworkState, price: PriceSchedule, size: RequestSize) -> Decision:
        ratio = fallback_cost(state, price, size, self.cloud_compute_s) / price.value_per_success
        tau = self.calibration.threshold(ratio)
        route = "cloud" if score < tau else "edge"
        return Decision(route, score, tau, ratio, cloud_latency_s(state, size, self.cloud_compute_s, price.round_trips))


@dataclass(frozen=True)
class FixedThreshold:
    """The baseline: fall back when the score is below a constant."""

    tau: float

    def decide(self, score: float) -> str:
        return "cloud" if score < self.tau else "edge"
