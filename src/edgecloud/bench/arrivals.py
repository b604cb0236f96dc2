"""Arrival processes: when each benchmark request is sent, as seconds after the run starts.

Replayed traces keep their own timestamps (scaled in time); synthetic load is Poisson or gamma
at a given rate (gamma with shape ``burstiness``: 1 is Poisson, < 1 burstier, > 1 smoother, as in
``vllm bench serve``). Fixed concurrency is not an arrival process: every request is ready at
time 0 and the runner's concurrency limit paces them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np


def trace_arrivals(offsets: Sequence[float], time_scale: float = 1.0) -> list[float]:
    """A trace's arrival offsets multiplied by ``time_scale`` (0.5 replays twice as fast)."""
    if not (time_scale > 0 and math.isfinite(time_scale)):
        raise ValueError(f"time_scale must be a finite number > 0, got {time_scale}")
    if any(b < a for a, b in itertools.pairwise(offsets)):
        raise ValueError("trace arrival times must be non-decreasing")
    return [offset * time_scale for offset in offsets]


def gamma_arrivals(n: int, rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """``n`` arrivals at mean ``rate`` per second with gamma gaps of shape ``burstiness``; the
    first request goes at time 0. ``rate=inf`` sends everything at once."""
    if n < 0:
        raise ValueError(f"number of requests must be >= 0, got {n}")
    if not rate > 0:
        raise ValueError(f"request rate must be > 0 (inf for all at once), got {rate}")
    if not (burstiness > 0 and math.isfinite(burstiness)):
        raise ValueError(f"burstiness must be a finite number > 0, got {burstiness}")
    if math.isinf(rate) or n == 0:
        return [0.0] * n
    # Gamma(shape k, scale θ) has mean kθ; θ = 1/(rate·k) keeps the mean gap at 1/rate.
    gaps = np.random.default_rng(seed).gamma(burstiness, 1.0 / (rate * burstiness), size=n - 1)
    return [0.0, *(float(t) for t in np.cumsum(gaps))]


def poisson_arrivals(n: int, rate: float, seed: int = 0) -> list[float]:
    """``n`` Poisson arrivals at ``rate`` per second (exponential gaps)."""
    return gamma_arrivals(n, rate, 1.0, seed)
