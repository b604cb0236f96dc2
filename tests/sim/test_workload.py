"""A trace's arrival rate scaled up: the pattern over time kept, the extra copies other users."""

from __future__ import annotations

import pytest

from edgecloud.bench.traces import TraceRequest
from edgecloud.sim.workload import scale_rate

TRACE = [
    TraceRequest(0.0, 100, 10, (0, 1)),
    TraceRequest(1.0, 200, 20, (0, 1, 2)),
    TraceRequest(3.0, 300, 30, (3,)),
]


def test_whole_factors_copy_every_request_between_it_and_the_next() -> None:
    out = scale_rate(TRACE, 3.0, seed=1)
    assert len(out) == 9
    assert [r.arrival_s for r in out] == sorted(r.arrival_s for r in out)
    for original in TRACE:
        copies = [r for r in out if r.input_len == original.input_len]
        assert len(copies) == 3 and all(r.output_len == original.output_len for r in copies)
        assert min(r.arrival_s for r in copies) == original.arrival_s
    # the last request's copies spread over the mean gap (1.5 s), not all at its arrival
    last = [r.arrival_s for r in out if r.input_len == 300]
    assert all(3.0 <= t <= 4.5 for t in last) and len(set(last)) == 3


def test_copies_share_prefixes_among_themselves_not_with_the_original() -> None:
    out = scale_rate(TRACE, 2.0, seed=0)
    span = 4  # hash ids 0..3
    heads = {r.hash_ids for r in out if r.input_len == 100}
    assert heads == {(0, 1), (0 + span, 1 + span)}
    second = {r.hash_ids for r in out if r.input_len == 200}
    assert second == {(0, 1, 2), (4, 5, 6)}  # the copy of request 2 shares its head with the copy of request 1


def test_a_fractional_factor_adds_that_share_of_requests_on_average() -> None:
    trace = [TraceRequest(float(i), 10, 1) for i in range(2000)]
    out = scale_rate(trace, 1.25, seed=0)
    assert 2400 < len(out) < 2600


def test_a_factor_that_is_not_positive_is_refused() -> None:
    with pytest.raises(ValueError, match="rate factor must be > 0"):
        scale_rate(TRACE, 0.0)


def test_bench_cluster_caps_lengths_to_the_models_context() -> None:
    from edgecloud.bench.workload import LengthScaling
    from edgecloud.sim.bench import fit_context

    fitted = fit_context(LengthScaling(1 / 32, 1 / 16), 512)
    assert (fitted.max_input_len, fitted.max_output_len) == (384, 128)
    assert fit_context(LengthScaling(max_input_len=100, max_output_len=50), 512).max_input_len == 100
    assert fit_context(LengthScaling(max_input_len=600, max_output_len=50), 512).max_input_len == 462
    with pytest.raises(ValueError, match="max_output_len must be < the model's context"):
        fit_context(LengthScaling(max_output_len=512), 512)
