"""Reports of a serving benchmark: a summary table, the reasons of its errors, a JSON file, and a
plot of latency CDFs and throughput over time; and the console every benchmark prints its tables to.
"""

from __future__ import annotations

import json
import math
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table

from edgecloud.bench.metrics import BenchSummary, LatencyStats, RequestRecord, throughput_timeline

PIPED_WIDTH = 512
"""Columns of a table printed to a pipe or a file: rich would fall back to 80 and cut cells
("1,10…"); tables are not stretched to it, only no longer cut."""


def report_console(file: IO[str] | None = None) -> Console:
    """A console for benchmark tables on ``file`` (stdout): the terminal's width on a terminal;
    piped or redirected, wide enough that no table is cut or wrapped."""
    console = Console(file=file or sys.stdout)
    if console.is_terminal:
        return console
    return Console(file=file or sys.stdout, width=PIPED_WIDTH)


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


def error_reasons(records: Sequence[RequestRecord], per_kind: int = 3) -> list[str]:
    """One line per error kind and distinct reason, most frequent first (at most ``per_kind``
    reasons a kind): ``http_400 × 2: max_tokens must be >= 1 (requests 3, 17)``. The reason is
    the server's own message where the body is an OpenAI error object, else the body itself."""
    by_kind: dict[str, Counter[str]] = {}
    examples: dict[tuple[str, str], list[int]] = {}
    for record in records:
        if record.error is None:
            continue
        reason = _reason(record.error_detail)
        by_kind.setdefault(record.error, Counter())[reason] += 1
        examples.setdefault((record.error, reason), []).append(record.index)
    lines = []
    for kind, reasons in sorted(by_kind.items(), key=lambda item: -sum(item[1].values())):
        for reason, count in reasons.most_common(per_kind):
            indices = examples[(kind, reason)]
            shown = ", ".join(str(i) for i in indices[:5]) + (", ..." if len(indices) > 5 else "")
            lines.append(f"{kind} × {count}: {reason} (request{'s' if count > 1 else ''} {shown})")
        others = len(reasons) - per_kind
        if others > 0:
            lines.append(f"{kind}: {others} other reason{'s' if others > 1 else ''} (see the JSON's requests)")
    return lines


def _reason(detail: str) -> str:
    text = detail.strip()
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            param = error.get("param")
            return error["message"] + (f" (param: {param})" if param else "")
        if isinstance(error, str):
            return error
    text = " ".join(text.split())
    return (text[:200] + "…" if len(text) > 200 else text) or "no detail"


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
    path: str | Path,
    summary: BenchSummary,
    records: Sequence[RequestRecord],
    config: dict[str, Any],
    machine: dict[str, Any] | None = None,
) -> None:
    """The summary, the run's configuration, the machine (:mod:`edgecloud.bench.machine`), and
    every request's own numbers."""
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
    if machine is not None:
        document["machine"] = machine
    Path(path).write_text(json.dumps(_finite(document), indent=2) + "\n")


def plot(path: str | Path, records: Sequence[RequestRecord], summary: BenchSummary, title: str = "") -> None:
    """A 2×3 grid: CDFs of TTFT, TPOT, ITL and e2e (steps, one per sample, axes cut at a robust
    limit with the samples beyond counted), output-token throughput over time, and each request's
    TTFT and e2e against its send time."""
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
    figure, grid = plt.subplots(2, 3, figsize=(15, 8.5))
    axes = list(grid.flat)
    for axis, (name, samples, stats) in zip(axes, series, strict=False):
        values = [x * 1000 for x in samples]
        if values:
            cdf_steps(axis, values, label=f"{len(values)} samples")
            axis.axvline(stats.p50 * 1000, linestyle=":", color="grey", label=f"p50 {stats.p50 * 1000:.1f}")
            axis.axvline(stats.p99 * 1000, linestyle="--", color="grey", label=f"p99 {stats.p99 * 1000:.1f}")
            robust_xlim(axis, values)
            axis.legend(loc="lower right", fontsize=8)
        else:
            axis.text(0.5, 0.5, "no samples", ha="center", va="center", transform=axis.transAxes)
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
    over_time = axes[5]
    sends = [r.send_time for r in done]
    over_time.scatter(sends, [r.e2e * 1000 for r in done], s=8, label="e2e", color="tab:orange")
    over_time.scatter(
        [r.send_time for r in done if r.ttft is not None],
        [r.ttft * 1000 for r in done if r.ttft is not None],
        s=8,
        label="TTFT",
        color="tab:blue",
    )
    failed = [r.send_time for r in records if not r.ok]
    if failed:
        over_time.scatter(failed, [0.0] * len(failed), marker="x", color="red", label=f"failed ({len(failed)})")
    if done:
        robust_ylim(over_time, [r.e2e * 1000 for r in done])
        over_time.legend(loc="upper left", fontsize=8)
    over_time.set_xlabel("request sent at (s since start)")
    over_time.set_ylabel("latency (ms)")
    over_time.set_title("latency by send time")
    over_time.grid(alpha=0.3)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def cdf_steps(axis: Any, values: Sequence[float], **style: Any) -> None:
    """The empirical CDF of ``values`` as the step function it is: it rises by 1/n at each sample
    (a line between samples would show values that were never observed)."""
    ordered = sorted(values)
    n = len(ordered)
    axis.step([ordered[0], *ordered], [0.0, *((i + 1) / n for i in range(n))], where="post", **style)


def robust_limit(values: Sequence[float]) -> float:
    """An upper axis limit that a few outliers do not stretch: the largest value within Tukey's
    far-out fence (third quartile + 3 × the interquartile range) when at most 5% of the values
    (at least one) lie beyond it, else the largest value (a long tail is data, not an outlier)."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    q1, q3 = np.percentile(data, [25, 75])
    fence = float(q3 + 3 * (q3 - q1))
    inside = data[data <= fence]
    if len(data) - len(inside) > max(1, 0.05 * len(data)) or len(inside) == 0:
        return float(data.max())
    return float(inside.max())


def robust_xlim(axis: Any, values: Sequence[float]) -> None:
    """Cut the x axis at :func:`robust_limit` and say how many samples lie beyond, and how far."""
    limit, low = robust_limit(values), min(values)
    pad = 0.04 * ((limit - low) or abs(limit) or 1.0)
    axis.set_xlim(low - pad, limit + pad)
    beyond = [v for v in values if v > limit + pad]
    if beyond:
        axis.text(
            0.03, 0.97, f"{len(beyond)} beyond the axis, max {max(beyond):.1f}", transform=axis.transAxes,
            ha="left", va="top", fontsize=8, color="dimgrey", bbox={"facecolor": "white", "alpha": 0.8, "lw": 0},
        )


def robust_ylim(axis: Any, values: Sequence[float]) -> None:
    """The same for a y axis that starts at 0."""
    limit = robust_limit(values)
    axis.set_ylim(0, 1.06 * limit if limit > 0 else 1.0)
    beyond = [v for v in values if v > 1.06 * limit]
    if beyond:
        axis.text(
            0.98, 0.98, f"{len(beyond)} above, max {max(beyond):.1f}", transform=axis.transAxes,
            ha="right", va="top", fontsize=8, color="dimgrey",
        )


def comparison_plot(path: str | Path, reports: dict[str, dict[str, Any]], title: str = "") -> None:
    """TTFT, TPOT and e2e CDFs of several runs (``write_json`` documents) on shared axes, for
    side-by-side benchmarks such as a baseline and our system on one workload."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    pooled: dict[str, list[float]] = {}
    for axis, metric in zip(axes, ("ttft", "tpot", "e2e"), strict=True):
        for label, report in reports.items():
            done = [r[metric] for r in report["requests"] if r["error"] is None and r[metric] is not None]
            values = [x * 1000 for x in done]
            if values:
                mean = report["summary"][metric]["mean"] * 1000
                cdf_steps(axis, values, label=f"{label} (mean {mean:.1f})")
                pooled.setdefault(metric, []).extend(values)
        if pooled.get(metric):
            robust_xlim(axis, pooled[metric])
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
