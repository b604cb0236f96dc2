"""Figures for ``edgecloud stream bench``: the side-by-side cases and the loss-change run."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _per_case(cases: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """One entry per case; where a case ran several draws, their pooled figures: the p95 of
    all retransmission losses, the median of the first-loss p95s, and the mean stall time
    and overhead per draw."""
    import numpy as np

    from edgecloud.stream.bench import SIDES, by_case, p95_ms

    groups = by_case(cases)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        entry = dict(group[0])
        for side in SIDES:
            first = [c[side]["recovery_ms_p95"] for c in group if c[side]["recovery_ms_p95"] is not None]
            retx = [v for c in group for v in c[side].get("retx_loss_recovery_ms", [])]
            entry[side] = {
                "retx_loss_recovery_ms_p95": p95_ms(retx),
                "recovery_ms_p95": float(np.median(first)) if first else None,
                "stall_s": float(np.mean([c[side]["stall_s"] for c in group])),
                "overhead": float(np.mean([c[side]["overhead"] for c in group])),
            }
        out.append(entry)
    return out, max((len(g) for g in groups.values()), default=1)


def plot_cases(cases: list[dict[str, Any]], path: str | Path) -> None:
    """Per case: p95 recovery of retransmission losses, total stall time, overhead (pooled
    over draws where a case ran several)."""
    plt = _pyplot()
    cases, draws = _per_case(cases)
    short = {"bernoulli": "indep", "bursty": "burst", "bursty-time": "b-time"}
    labels = [f"{c['loss'] * 100:g}% {short.get(c['loss_model'], c['loss_model'])}\n{c['rtt_ms']:g} ms" for c in cases]
    metrics = [
        ("retx_loss_recovery_ms_p95", "retransmission-loss recovery p95 (ms)"),
        ("recovery_ms_p95", "first-loss recovery p95 (ms)"),
        ("stall_s", "total stall time at the player (s)"),
        ("overhead", "redundancy overhead (copy / goodput bytes)"),
    ]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(8, 1.1 * len(cases)), 12), sharex=True)
    x = range(len(cases))
    for ax, (key, title) in zip(axes, metrics, strict=True):
        for offset, side, colour in ((-0.2, "baseline", "tab:gray"), (0.2, "autorec", "tab:blue")):
            values = [c[side][key] or 0 for c in cases]
            ax.bar([i + offset for i in x], values, width=0.4, label=side, color=colour)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    axes[-1].set_xticks(list(x), labels, fontsize=8)
    duration = cases[0]["duration_s"] if cases else 0
    clock = cases[0].get("clock", "real") if cases else "real"
    pooled = f"\n{draws} draws pooled (stall time and overhead: mean per draw)" if draws > 1 else ""
    fig.suptitle(f"AutoRec vs aioquic baseline, {duration:g} s of stream per case ({clock} clock){pooled}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_loss_change(result: dict[str, Any], path: str | Path, budget: float) -> None:
    """Measured loss, copies per retransmission and overhead over time, with the link's steps."""
    plt = _pyplot()
    history = result["autorec"].get("history", [])
    if not history:
        raise ValueError("the loss-change result has no controller history to plot")
    t0 = history[0]["t"]
    t = [h["t"] - t0 for h in history]
    fig, (ax_loss, ax_copies, ax_over) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    steps = result["loss_steps"]
    step_t = [s[0] for s in steps] + [result["duration_s"]]
    for i, (start, loss) in enumerate(steps):
        ax_loss.hlines(loss * 100, start, step_t[i + 1], colors="tab:red", label="link loss" if i == 0 else None)
    ax_loss.plot(t, [h["loss"] * 100 for h in history], label="measured by the controller")
    ax_loss.set_ylabel("loss (%)")
    ax_loss.legend(fontsize=8)
    ax_copies.step(t, [h["copies"] for h in history], where="post")
    ax_copies.set_ylabel("copies per\nretransmission")
    windowed = [0.0]
    for a, b in itertools.pairwise(history):
        goodput = b["goodput_bytes"] - a["goodput_bytes"]
        windowed.append((b["copy_bytes"] - a["copy_bytes"]) / goodput if goodput > 0 else 0.0)
    ax_over.plot(t, windowed, label="per sample interval", alpha=0.6)
    ax_over.plot(t, [h["overhead"] for h in history], label="cumulative")
    ax_over.axhline(budget, color="tab:red", linestyle="--", label="budget")
    ax_over.set_ylabel("overhead")
    ax_over.set_xlabel("time (s)")
    ax_over.legend(fontsize=8)
    fig.suptitle(f"AutoRec following a loss change, RTT {result['rtt_ms']:g} ms ({result.get('clock', 'real')} clock)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
