import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from edgecloud.bench.arrivals import gamma_arrivals, poisson_arrivals, trace_arrivals


def test_trace_arrivals_scale_time() -> None:
    assert trace_arrivals([0.0, 1.0, 4.0], time_scale=0.5) == [0.0, 0.5, 2.0]
    with pytest.raises(ValueError, match="time_scale must be a finite number > 0, got 0"):
        trace_arrivals([0.0], 0)
    with pytest.raises(ValueError, match="non-decreasing"):
        trace_arrivals([1.0, 0.5])


def test_infinite_rate_sends_everything_at_once() -> None:
    assert gamma_arrivals(3, math.inf) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("burstiness", [0.25, 1.0, 4.0])
def test_gaps_follow_the_documented_gamma_law(burstiness: float) -> None:
    # Gaps are Gamma(shape=burstiness) with mean 1/rate (Poisson: exponential). A
    # Kolmogorov-Smirnov test on 20,000 gaps from a fixed seed tells a wrong law or scale
    # by orders of magnitude in p-value, and gives the same verdict on every run.
    rate = 2.0
    gaps = np.diff(gamma_arrivals(20_001, rate, burstiness, seed=7))
    law = stats.gamma(burstiness, scale=1.0 / (rate * burstiness))
    assert stats.kstest(gaps, law.cdf).pvalue > 0.01
    for wrong in (stats.gamma(burstiness, scale=1.0 / rate), stats.expon(scale=1.0 / rate)):
        if wrong.var() != law.var():  # Poisson's own law is both of these
            assert stats.kstest(gaps, wrong.cdf).pvalue < 1e-6


def test_poisson_is_gamma_of_shape_one_and_the_seed_decides_the_draw() -> None:
    assert poisson_arrivals(500, 2.0, seed=7) == gamma_arrivals(500, 2.0, 1.0, seed=7)
    assert poisson_arrivals(500, 2.0, seed=7) == poisson_arrivals(500, 2.0, seed=7)
    assert poisson_arrivals(500, 2.0, seed=8) != poisson_arrivals(500, 2.0, seed=7)


def test_mean_rate_is_kept_for_any_burstiness() -> None:
    for burstiness in (0.25, 1.0, 4.0):
        times = gamma_arrivals(20001, rate=10.0, burstiness=burstiness, seed=1)
        assert times[-1] / 20000 == pytest.approx(0.1, rel=0.05)


def test_burstier_means_more_variable_gaps() -> None:
    def cv(burstiness: float) -> float:
        gaps = np.diff(gamma_arrivals(5001, 10.0, burstiness, seed=3))
        return float(gaps.std() / gaps.mean())

    assert cv(0.25) > cv(1.0) > cv(4.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": -1, "rate": 1.0}, "number of requests must be >= 0"),
        ({"n": 3, "rate": 0.0}, "request rate must be > 0"),
        ({"n": 3, "rate": 1.0, "burstiness": 0.0}, "burstiness must be a finite number > 0"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        gamma_arrivals(**kwargs)  # type: ignore[arg-type]


@given(st.integers(0, 200), st.floats(0.01, 1000), st.floats(0.05, 20), st.integers(0, 2**31))
def test_arrivals_start_at_zero_and_never_go_back(n: int, rate: float, burstiness: float, seed: int) -> None:
    times = gamma_arrivals(n, rate, burstiness, seed)
    assert len(times) == n
    assert times[:1] in ([], [0.0])
    assert all(b >= a for a, b in itertools.pairwise(times))
