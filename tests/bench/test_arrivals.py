import itertools
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecloud.bench.arrivals import gamma_arrivals, poisson_arrivals, trace_arrivals


def test_trace_arrivals_scale_time() -> None:
    assert trace_arrivals([0.0, 1.0, 4.0], time_scale=0.5) == [0.0, 0.5, 2.0]
    with pytest.raises(ValueError, match="time_scale must be a finite number > 0, got 0"):
        trace_arrivals([0.0], 0)
    with pytest.raises(ValueError, match="non-decreasing"):
        trace_arrivals([1.0, 0.5])


def test_infinite_rate_sends_everything_at_once() -> None:
    assert gamma_arrivals(3, math.inf) == [0.0, 0.0, 0.0]


def test_poisson_gaps_are_exponential_with_the_seeded_generator() -> None:
    times = poisson_arrivals(4, rate=2.0, seed=7)
    expected = np.cumsum(np.random.default_rng(7).gamma(1.0, 0.5, size=3))
    assert times == [0.0, *expected.tolist()]


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
