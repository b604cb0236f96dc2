"""NetGPT's threshold: isotonic calibration, the threshold as the paper derives it, and its
monotone dependence on bandwidth and RTT (the paper's theorem, checked for random calibrations)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.edge.netgpt.policy import (
    PRICES,
    Calibration,
    NetGPTPolicy,
    NetworkState,
    PriceSchedule,
    RequestSize,
    cloud_latency_s,
    fallback_cost,
    isotonic,
)

SIZE = RequestSize(request_bytes=6000, response_bytes=400, tokens=1500)


def random_calibration(seed: int, n: int = 200) -> Calibration:
    rng = random.Random(seed)
    scores = [rng.random() for _ in range(n)]
    edge = [rng.random() < s for s in scores]  # the edge succeeds more often at high scores
    cloud = [rng.random() < 0.8 - 0.2 * s for s in scores]
    return Calibration.fit(scores, edge, cloud)


def test_isotonic_is_the_monotone_least_squares_fit() -> None:
    knots, values = isotonic([0.1, 0.2, 0.3, 0.4], [1, 0, 0, 1])
    assert values == sorted(values)
    assert knots[0] == pytest.approx(0.2) and values[0] == pytest.approx(1 / 3) and values[-1] == 1
    _, down = isotonic([0.1, 0.2, 0.3], [0, 1, 0], increasing=False)
    assert down == sorted(down, reverse=True)


def test_threshold_solves_gain_equals_cost() -> None:
    cal = Calibration(edge_knots=[0.0, 1.0], edge_values=[0.0, 1.0], cloud_knots=[0.0, 1.0], cloud_values=[0.8, 0.8])
    # h(s) = 0.8 - s: tau* = 0.8 - D/V
    assert cal.threshold(0.3) == pytest.approx(0.5, abs=2e-3)
    assert cal.threshold(0.0) == pytest.approx(0.8, abs=2e-3)
    assert cal.threshold(0.9) == 0.0  # the cloud never pays
    assert cal.threshold(-0.5) == 1.0  # the cloud always pays (a negative cost: subsidised)


def test_latency_and_cost_follow_the_model() -> None:
    state = NetworkState(bandwidth_mbps=8.0, rtt_ms=100.0)
    assert cloud_latency_s(state, SIZE, 0.5) == pytest.approx(0.1 + 8 * 6400 / 8e6 + 0.5)
    price = PRICES["standard"]
    expected = price.cloud_per_1k_tokens * 1.5 + price.latency_per_s * cloud_latency_s(state, SIZE, 0.5)
    assert fallback_cost(state, price, SIZE, 0.5) == pytest.approx(expected)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), b1=st.floats(0.05, 1000), b2=st.floats(0.05, 1000),
       r1=st.floats(0, 2000), r2=st.floats(0, 2000), price=st.sampled_from(sorted(PRICES)))
def test_threshold_is_monotone_in_bandwidth_and_rtt(seed: int, b1: float, b2: float, r1: float, r2: float,
                                                     price: str) -> None:
    policy = NetGPTPolicy(random_calibration(seed), cloud_compute_s=0.8)
    p = PRICES[price]
    (blo, bhi), (rlo, rhi) = sorted((b1, b2)), sorted((r1, r2))
    # more bandwidth: the cloud is cheaper, the threshold (fall back below it) does not fall
    assert policy.threshold(NetworkState(bhi, rlo), p, SIZE) >= policy.threshold(NetworkState(blo, rlo), p, SIZE)
    # more RTT: the cloud is dearer, the threshold does not rise
    assert policy.threshold(NetworkState(blo, rhi), p, SIZE) <= policy.threshold(NetworkState(blo, rlo), p, SIZE)


def test_decisions_follow_the_threshold_and_a_better_network_offloads_more() -> None:
    policy = NetGPTPolicy(random_calibration(1), cloud_compute_s=0.5)
    scores = [i / 100 for i in range(100)]
    price = PriceSchedule("t", cloud_per_1k_tokens=0.02, latency_per_s=0.2)
    good, bad = NetworkState(100, 10), NetworkState(0.5, 600)
    offload_good = sum(policy.decide(s, good, price, SIZE).route == "cloud" for s in scores)
    offload_bad = sum(policy.decide(s, bad, price, SIZE).route == "cloud" for s in scores)
    assert offload_good > offload_bad
    d = policy.decide(0.3, good, price, SIZE)
    assert d.route == ("cloud" if d.threshold > 0.3 else "edge")


def test_bad_states_and_prices_are_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="bandwidth_mbps must be"):
        NetworkState(0, 10)
    with pytest.raises(ValueError, match="rtt_ms must be"):
        NetworkState(10, math.nan)
    with pytest.raises(ValueError, match="latency_per_s must be"):
        PriceSchedule("x", cloud_per_1k_tokens=0.1, latency_per_s=-1)
    with pytest.raises(ValueError, match="unknown fields"):
        PriceSchedule.from_dict({"name": "x", "cloud_per_1k_tokens": 0.1, "latency_per_s": 0.1, "tax": 3})
    with pytest.raises(ValueError, match="at least one"):
        Calibration.fit([], [], [])
