"""The timing benchmark runs end to end; timing itself is only bounded from below (never early)."""

import asyncio
import json
from pathlib import Path

import pytest

from edgecloud.netem.accuracy import format_report, measure


# real_clock: a delay on real sockets is bounded from below only (never early); slowness cannot fail it
@pytest.mark.real_clock
def test_timing_report_covers_every_path_and_nothing_arrives_early() -> None:
    report = asyncio.run(measure(delay_ms=10.0, packets=20, interval_ms=1.0, throughput=False))
    for path in (
        "udp_direct_rtt_ms",
        "udp_relay_unshaped_rtt_ms",
        "tcp_direct_rtt_ms",
        "tcp_proxy_unshaped_rtt_ms",
    ):
        assert report[path]["n"] == 20 and report[path]["min"] > 0
    for path in ("udp_relay_delay_error_ms", "tcp_proxy_delay_error_ms"):
        assert report[path]["n"] == 20 and report[path]["min"] >= 0.0  # the delay is never cut short
    assert "udp_relay_delay_error_ms" in format_report(report)


@pytest.mark.bench
@pytest.mark.bench_quick
def test_bench_timing_accuracy_and_throughput(bench_out: Path) -> None:
    # the run behind docs/data/netem_bench.json, written to OUT/netem/ (`make bench OUT=DIR`, default out/)
    report = asyncio.run(measure())
    out = bench_out / "netem" / "netem_bench.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(format_report(report))
    error = report["udp_relay_delay_error_ms"]
    print(f"HEADLINE netem: {report['configured_delay_ms']:g} ms configured delay held to +{error['p50']:.2f} ms p50 / "
          f"+{error['p99']:.2f} ms p99 (UDP relay, {error['n']} packets), never early (min +{error['min']:.3f} ms)")
    assert report["udp_relay_1000pps"]["delivered_fraction"] > 0.9
