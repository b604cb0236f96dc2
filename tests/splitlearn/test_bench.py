"""The full benchmark (``make bench``): real runs, so it is kept out of the default test run."""

import json
from pathlib import Path

import pytest

from edgecloud.splitlearn.bench import SCHEMES, BenchConfig, plot, run_bench, summarise, write_json


@pytest.mark.bench
def test_default_bench_writes_the_issue_schema_and_a_plot(tmp_path: Path) -> None:
    config = BenchConfig()
    report = run_bench(config)
    write_json(report, tmp_path / "out.json")
    plot(report, tmp_path / "out.png", config)
    rows = json.loads((tmp_path / "out.json").read_text())
    assert [row["bandwidth_mhz"] for row in rows] == list(config.bandwidths_mhz)
    for row in rows:
        assert set(row) == {"bandwidth_mhz", *SCHEMES}
        for scheme in SCHEMES:
            assert {"time_s", "predicted_s", "accuracy"} <= set(row[scheme])
    assert (tmp_path / "out.png").stat().st_size > 0
    for line in summarise(report.rows):
        print(line)
