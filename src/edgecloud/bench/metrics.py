"""Serving metrics from what a client observed: TTFT, TPOT, ITL, end-to-end latency, throughput,
goodput against latency SLOs, and errors by kind.

Definitions (those of ``vllm bench serve`` and of the server's own histograms, so the two can be
compared):
- TTFT: from sending the request to the first streamed chunk with a choice (its text may be
  empty: special tokens, text held back for stop strings);
- TPOT: ``(e2e − TTFT) / (output_tokens − 1)`` for requests with at least two output tokens;
- ITL: the gaps between successive output chunks, pooled over all requests;
- e2e: from sending the request to the end of its stream;
- throughput: over the run's duration, from the first send to the last completion;
- goodput: completed requests per second that met every given SLO; SLO attainment is that
  count over all requests sent (a failed request misses its SLO).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RequestRecord:
    """What the client saw of one request; times are seconds since the run started."""

    index: int
    send_time: float
    end_time: float = 0.0
    error: str | None = None
    error_detail: str = ""
    chunk_times: list[float] = field(default_factory=list)
    prompt_tokens: int | None = None
    output_tokens: int = 0
    expected_output_tokens: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def ttft(self) -> float | None:
        return self.chunk_times[0] - self.send_time if self.chunk_times else None

    @property
    def e2e(self) -> float:
        return self.end_time - self.send_time

    @property
    def tpot(self) -> float | None:
        ttft = self.ttft
        if ttft is None or self.output_tokens < 2:
            return None
        return (self.e2e - ttft) / (self.output_tokens - 1)

    @property
    def itls(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:], strict=False)]


@dataclass(frozen=True)
class LatencyStats:
    """Mean and percentiles of a latency, in seconds (``nan`` when there were no samples)."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> LatencyStats:
        if not samples:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        values = np.asarray(samples, dtype=np.float64)
        p50, p90, p99 = (float(x) for x in np.percentile(values, [50, 90, 99]))
        return cls(len(values), float(values.mean()), p50, p90, p99)


@dataclass(frozen=True)
class Slo:
    """Latency objectives in seconds; ``None`` means no objective on that metric."""

    ttft: float | None = None
    tpot: float | None = None

    def met_by(self, record: RequestRecord) -> bool:
        if not record.ok:
            return False
        ttft, tpot = record.ttft, record.tpot
        if self.ttft is not None and (ttft is None or ttft > self.ttft):
            return False
        return self.tpot is None or tpot is None or tpot <= self.tpot


@dataclass(frozen=True)
class BenchSummary:
    """The numbers a serving benchmark reports."""

    num_requests: int
    completed: int
    failed: int
    errors: dict[str, int]
    duration_s: float
    prompt_tokens: int
    output_tokens: int
    request_throughput: float
    output_token_throughput: float
    total_token_throughput: float
    ttft: LatencyStats
    tpot: LatencyStats
    itl: LatencyStats
    e2e: LatencyStats
    slo: Slo
    slo_attainment: float
    goodput: float


def run_duration(records: Sequence[RequestRecord]) -> float:
    """From the first send to the last completion."""
    if not records:
        return 0.0
    return max(r.end_time for r in records) - min(r.send_time for r in records)


def summarize(records: Sequence[RequestRecord], slo: Slo = Slo()) -> BenchSummary:
    done = [r for r in records if r.ok]
    duration = run_duration(records)
    prompt_tokens = sum(r.prompt_tokens or 0 for r in done)
    output_tokens = sum(r.output_tokens for r in done)
    good = sum(1 for r in records if slo.met_by(r))

    def per_second(x: float) -> float:
        return x / duration if duration > 0 else math.nan

    return BenchSummary(
        num_requests=len(records),
        completed=len(done),
        failed=len(records) - len(done),
        errors=dict(Counter(r.error for r in records if r.error is not None)),
        duration_s=duration,
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        request_throughput=per_second(len(done)),
        output_token_throughput=per_second(output_tokens),
        total_token_throughput=per_second(prompt_tokens + output_tokens),
        ttft=LatencyStats.of([t for r in done if (t := r.ttft) is not None]),
        tpot=LatencyStats.of([t for r in done if (t := r.tpot) is not None]),
        itl=LatencyStats.of([gap for r in done for gap in r.itls]),
        e2e=LatencyStats.of([r.e2e for r in done]),
        slo=slo,
        slo_attainment=good / len(records) if records else math.nan,
        goodput=per_second(good),
    )


def throughput_timeline(
    records: Sequence[RequestRecord], bin_s: float = 1.0
) -> tuple[list[float], list[float]]:
    """Output tokens per second in bins of ``bin_s`` from the run's start: each chunk carries
    ``output_tokens / chunks`` tokens of its request (a chunk may hold several tokens).
    Returns the bins' start times and rates."""
    if not bin_s > 0:
        raise ValueError(f"bin_s must be > 0, got {bin_s}")
    events = [
        (t, r.output_tokens / len(r.chunk_times))
        for r in records
        if r.ok and r.chunk_times
        for t in r.chunk_times
    ]
    if not events:
        return [], []
    start = min(r.send_time for r in records)
    num_bins = int((max(t for t, _ in events) - start) // bin_s) + 1
    totals = [0.0] * num_bins
    for t, tokens in events:
        totals[int((t - start) // bin_s)] += tokens
    return [start + i * bin_s for i in range(num_bins)], [x / bin_s for x in totals]
