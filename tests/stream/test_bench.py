"""The full AutoRec benchmark (``make bench``): every acceptance case, 60 s of stream each,
baseline and AutoRec side by side, plus the 1 % -> 10 % -> 1 % loss-change run, and the same
cases on a virtual clock with 300 s of stream each for larger samples.

Results go to docs/data/stream_bench*.json and docs/stream_*.png. Nothing here asserts
timing: the test checks that every run delivered exactly the bytes that were sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.stream import bench, plots
from edgecloud.stream.controller import AutoRecConfig
from edgecloud.stream.source import SourceConfig

DOCS = Path(__file__).resolve().parents[2] / "docs"
SOURCE = SourceConfig(fps=30, bitrate_mbps=0.3, gop=30)


@pytest.mark.bench
@pytest.mark.timeout(3600)
def test_full_benchmark():
    autorec = AutoRecConfig()
    cases = bench.run_cases(
        [0.0, 0.01, 0.05, 0.10],
        ["bernoulli", "bursty"],
        [20.0, 100.0],
        duration_s=60.0,
        autorec=autorec,
        source=SOURCE,
        playout_delay_s=0.3,
        rate_mbps=20.0,
    )
    bench.write_json(DOCS / "data" / "stream_bench.json", cases)
    plots.plot_cases(cases, DOCS / "stream_bench.png")
    change = bench.run_loss_change(
        duration_s=60.0, rtt_ms=100.0, autorec=autorec, source=SOURCE, playout_delay_s=0.3, rate_mbps=20.0
    )
    bench.write_json(DOCS / "data" / "stream_loss_change.json", change)
    plots.plot_loss_change(change, DOCS / "stream_loss_change.png", autorec.overhead_budget)
    virtual = bench.run_cases(
        [0.0, 0.01, 0.05, 0.10],
        ["bernoulli", "bursty"],
        [20.0, 100.0],
        duration_s=300.0,
        autorec=autorec,
        source=SOURCE,
        playout_delay_s=0.3,
        rate_mbps=20.0,
        virtual=True,
    )
    bench.write_json(DOCS / "data" / "stream_bench_virtual.json", virtual)
    plots.plot_cases(virtual, DOCS / "stream_bench_virtual.png")
    for run in (cases, virtual):
        assert all(case[side]["bytes_equal"] for case in run for side in ("baseline", "autorec"))
    assert change["autorec"]["bytes_equal"]
