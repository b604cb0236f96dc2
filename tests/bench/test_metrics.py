import math

import pytest

from edgecloud.bench.metrics import LatencyStats, RequestRecord, Slo, summarize, throughput_timeline


def record(index: int, send: float, chunks: list[float], end: float, tokens: int, prompt: int = 10,
           error: str | None = None) -> RequestRecord:
    return RequestRecord(index, send, end, error, "", chunks, prompt, tokens, tokens)


# Two requests: A sends at 0, chunks at 1, 2, 4, ends at 4 with 3 tokens;
# B sends at 1, one chunk at 1.5, ends at 2 with 1 token; C fails at 3.
A = record(0, 0.0, [1.0, 2.0, 4.0], 4.0, 3)
B = record(1, 1.0, [1.5], 2.0, 1, prompt=20)
C = record(2, 2.0, [], 3.0, 0, error="http_503")


def test_per_request_definitions() -> None:
    assert A.ttft == 1.0
    assert A.e2e == 4.0
    assert A.tpot == 1.5  # (4 - 1) / (3 - 1)
    assert A.itls == [1.0, 2.0]
    assert B.tpot is None  # one token has no time per output token
    assert C.ttft is None


def test_latency_stats_use_linear_percentiles() -> None:
    stats = LatencyStats.of([1.0, 2.0, 3.0, 4.0, 10.0])
    assert stats == LatencyStats(5, 4.0, 3.0, pytest.approx(7.6), pytest.approx(9.76))
    assert math.isnan(LatencyStats.of([]).mean)


def test_summary_of_a_small_run() -> None:
    summary = summarize([A, B, C], Slo(ttft=0.75))
    assert (summary.num_requests, summary.completed, summary.failed) == (3, 2, 1)
    assert summary.errors == {"http_503": 1}
    assert summary.duration_s == 4.0
    assert (summary.prompt_tokens, summary.output_tokens) == (30, 4)
    assert summary.request_throughput == 0.5
    assert summary.output_token_throughput == 1.0
    assert summary.total_token_throughput == 8.5
    assert summary.ttft == LatencyStats(2, 0.75, 0.75, pytest.approx(0.95), pytest.approx(0.995))
    assert summary.tpot == LatencyStats(1, 1.5, 1.5, 1.5, 1.5)
    assert summary.itl.count == 2 and summary.itl.mean == 1.5
    assert summary.e2e.mean == 2.5
    # Only B meets TTFT <= 0.75 s; the failed request counts against attainment.
    assert summary.slo_attainment == pytest.approx(1 / 3)
    assert summary.goodput == 0.25


def test_slo_on_tpot_and_both() -> None:
    assert Slo(tpot=1.5).met_by(A) and not Slo(tpot=1.4).met_by(A)
    assert Slo(ttft=1.0, tpot=1.5).met_by(A) and not Slo(ttft=0.9, tpot=1.5).met_by(A)
    assert Slo().met_by(B) and not Slo().met_by(C)


def test_throughput_timeline_spreads_usage_over_chunks() -> None:
    # A's 3 tokens over 3 chunks, B's 1 token: bins [0,2): chunk 1.0 + 1.5 -> 2 tokens;
    # [2,4): chunk 2.0 -> 1 token; [4,6): chunk 4.0 -> 1 token.
    starts, rates = throughput_timeline([A, B, C], bin_s=2.0)
    assert starts == [0.0, 2.0, 4.0]
    assert rates == [1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="bin_s must be > 0"):
        throughput_timeline([A], 0)
