"""Reports of a serving benchmark: a summary table, a JSON file, and a plot of latency CDFs and
throughput over time."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.table import Table

from edgecloud.bench.metrics import BenchSummary, LatencyStats, RequestRecord, throughput_timeline


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:.1f}"


def summary_table(summary: BenchSummary, title: str = "Serving benchmark") -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("requests (completed / sent)", f"{summary.completed} / {summary.num_requests}"),
        ("errors", ", ".join(f"{k}: {v}" for k, v in sorted(summary.errors.items())) or "none"),
        ("duration (s)", f"{summary.duration_s:.2f}"),
        ("prompt / output tokens", f"{summary.prompt_tokens} / {summary.output_tokens}"),
        ("request throughput (req/s)", f"{summary.request_throughput:.2f}"),
        ("output token throughput (tok/s)", f"{summary.output_token_throughput:.1f}"),
        ("total token throughput (tok/s)", f"{summary.total_token_throughput:.1f}"),
    ]
    for table_row in rows:
        table.add_row(*table_row)
    for name, stats in (("TTFT", summary.ttft), ("TPOT", summary.tpot), ("ITL", summary.itl),
                        ("E2E", summary.e2e)):
        table.add_row(
            f"{name} ms (mean / p50 / p90 / p99)",
            " / ".join(_ms(x) for x in (stats.mean, stats.p50, stats.p90, stats.p99)),
        )
    if summary.slo.ttft is not None or summary.slo.tpot is not None:
        objectives = ", ".join(
            f"{name} ≤ {value * 1000:g} ms"
            for name, value in (("TTFT", summary.slo.ttft), ("TPOT", summary.slo.tpot))
            if value is not None
        )
        table.add_row(f"SLO attainment ({objectives})", f"{summary.slo_attainment * 100:.1f}%")
        table.add_row("goodput (req/s)", f"{summary.goodput:.2f}")
    return table


def _finite(value: Any) -> Any:
    """JSON has no NaN: write ``null`` for a metric without samples."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_json(
    path: str | Path, summary: BenchSummary, records: Sequence[RequestRecord], config: dict[str, Any]
) -> None:
    """The summary, the run's configuration, and every request's own numbers."""
    per_request = [
        {
            "index": r.index,
            "send_time": r.send_time,
            "ttft": r.ttft,
            "tpot": r.tpot,
            "e2e": r.e2e,
            "prompt_tokens": r.prompt_tokens,
            "output_tokens": r.output_tokens,
            "expected_output_tokens": r.expected_output_tokens,
            "error": r.error,
            "error_detail": r.error_detail or None,
        }
        for r in records
    ]
    document = {"config": config, "summary": asdict(summary), "requests": per_request}
    Path(path).write_text(json.dumps(_finite(document), indent=2) + "\n")


def plot(path: str | Path, records: Sequence[RequestRecord], summary: BenchSummary, title: str = "") -> None:
    """Latency CDFs (TTFT, TPOT, ITL, e2e) and output-token throughput over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in records if r.ok]
    series: list[tuple[str, list[float], LatencyStats]] = [
        ("TTFT", [t for r in done if (t := r.ttft) is not None], summary.ttft),
        ("TPOT", [t for r in done if (t := r.tpot) is not None], summary.tpot),
        ("ITL", [g for r in done for g in r.itls], summary.itl),
        ("E2E", [r.e2e for r in done], summary.e2e),
    ]
    figure, axes = plt.subplots(1, 5, figsize=(22, 4))
    for axis, (name, samples, stats) in zip(axes, series, strict=False):
        values = sorted(x * 1000 for x in samples)
        if values:
            axis.plot(values, [(i + 1) / len(values) for i in range(len(values))])
            axis.axvline(stats.p99 * 1000, linestyle="--", color="grey", label=f"p99 {stats.p99 * 1000:.1f}")
            axis.legend(loc="lower right")
        axis.set_xlabel(f"{name} (ms)")
        axis.set_ylabel("fraction of samples")
        axis.set_title(f"{name} CDF")
        axis.grid(alpha=0.3)
    # About sixty bins over the run, at least 0.1 s each.
    starts, rates = throughput_timeline(records, bin_s=max(0.1, summary.duration_s / 60))
    axes[4].step(starts, rates, where="post")
    axes[4].set_xlabel("time since start (s)")
    axes[4].set_ylabel("output tokens / s")
    axes[4].set_title("throughput over time")
    axes[4].grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def comparison_plot(path: str | Path, reports: dict[str, dict[str, Any]], title: str = "") -> None:
    """TTFT, TPOT and e2e CDFs of several runs (``write_json`` documents) on shared axes, for
    side-by-side benchmarks such as a baseline and our system on one workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for axis, metric in zip(axes, ("ttft", "tpot", "e2e"), strict=True):
        for label, report in reports.items():
            done = [r[metric] for r in report["requests"] if r["error"] is None and r[metric] is not None]
            values = sorted(x * 1000 for x in done)
            if values:
                mean = report["summary"][metric]["mean"] * 1000
                fractions = [(i + 1) / len(values) for i in range(len(values))]
                axis.plot(values, fractions, label=f"{label} (mean {mean:.1f})")
        axis.set_xlabel(f"{metric.upper()} (ms)")
        axis.set_ylabel("fraction of requests")
        axis.set_title(f"{metric.upper()} CDF")
        axis.grid(alpha=0.3)
        axis.legend(loc="lower right")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
