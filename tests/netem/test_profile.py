"""Profiles, schedules and their validation: bad input names the field and the allowed range."""

import json
from pathlib import Path

import pytest

from edgecloud.netem import PROFILES, Bernoulli, GilbertElliott, LinkProfile, Schedule, profile_from_dict


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"delay_ms": -1.0}, r"LinkProfile\.delay_ms must be a finite number >= 0, got -1"),
        ({"jitter_ms": float("nan")}, r"LinkProfile\.jitter_ms must be a finite number >= 0"),
        ({"rate_mbps": 0.0}, r"LinkProfile\.rate_mbps must be > 0 or None"),
        ({"queue_bytes": 0}, r"LinkProfile\.queue_bytes must be an integer >= 1"),
        ({"loss": 1.5}, r"LinkProfile\.loss must be a probability in \[0, 1\], got 1\.5"),
        ({"loss": "often"}, r"LinkProfile\.loss must be None, a probability"),
    ],
)
def test_bad_profile_fields_are_named_with_their_range(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LinkProfile(**kwargs)  # type: ignore[arg-type]


def test_bad_loss_models_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"Bernoulli\.p must be a probability in \[0, 1\], got -0\.1"):
        Bernoulli(-0.1)
    with pytest.raises(ValueError, match=r"GilbertElliott\.loss_in_bad must be a probability"):
        GilbertElliott(0.1, 0.5, loss_in_bad=2.0)
    with pytest.raises(ValueError, match="bad state is absorbing"):
        GilbertElliott(0.1, 0.0)
    with pytest.raises(ValueError, match=r"loss_rate must be in \[0, 1\)"):
        GilbertElliott.from_mean(1.0, 3.0)
    with pytest.raises(ValueError, match="burst_len must be >= 1"):
        GilbertElliott.from_mean(0.1, 0.5)
    with pytest.raises(ValueError, match="use a longer burst_len"):
        GilbertElliott.from_mean(0.9, 1.0)


def test_schedule_must_start_at_zero_and_increase() -> None:
    profile = LinkProfile()
    with pytest.raises(ValueError, match="must start at t=0"):
        Schedule([(1.0, profile)])
    with pytest.raises(ValueError, match=r"increase strictly, got 5\.0 then 5\.0"):
        Schedule([(0.0, profile), (5.0, profile), (5.0, profile)])
    with pytest.raises(ValueError, match="at least one"):
        Schedule([])
    with pytest.raises(ValueError, match="must hold LinkProfile"):
        Schedule([(0.0, "wifi")])  # type: ignore[list-item]


def test_schedule_picks_the_profile_in_force() -> None:
    a, b = LinkProfile(delay_ms=1.0), LinkProfile(delay_ms=2.0)
    schedule = Schedule([(0, a), (10, b)])
    assert [schedule.at(t) for t in (-1.0, 0.0, 9.999, 10.0, 1e9)] == [a, a, a, b, b]


def test_schedule_from_json_file(tmp_path: Path) -> None:
    path = tmp_path / "schedule.json"
    path.write_text(
        json.dumps(
            [
                {"at_s": 0, "delay_ms": 50, "loss": 0.01},
                {"at_s": 30, "profile": "tactical-radio", "jitter_ms": 0},
                {"at_s": 60, "loss": {"model": "gilbert-elliott", "mean": 0.1, "burst_len": 5}},
            ]
        )
    )
    schedule = Schedule.from_json(path)
    assert schedule.at(0) == LinkProfile(delay_ms=50.0, loss=Bernoulli(0.01))
    assert schedule.at(45) == LinkProfile(**{**PROFILES["tactical-radio"].__dict__, "jitter_ms": 0})
    assert schedule.at(61).loss == GilbertElliott.from_mean(0.1, 5.0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"profile": "moon-link"},
            "unknown profile 'moon-link'; known: lte, satellite-geo, tactical-radio, wifi",
        ),
        ({"delay": 5}, r"unknown link profile field\(s\) \['delay'\]"),
        ({"loss": {"model": "pareto"}}, "loss model must be 'bernoulli' or 'gilbert-elliott'"),
        ({"loss": 2}, r"loss\.p must be a probability"),
    ],
)
def test_profile_from_dict_rejects_bad_specs(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        profile_from_dict(spec)


def test_named_profiles_match_their_descriptions() -> None:
    wifi, radio = PROFILES["wifi"], PROFILES["tactical-radio"]
    assert 2 * wifi.delay_ms <= 10 and wifi.rate_mbps is not None and 10 <= wifi.rate_mbps <= 100
    assert wifi.loss is not None and wifi.loss.mean_loss <= 0.005
    assert radio.delay_ms == pytest.approx(100 * wifi.delay_ms)
    assert radio.rate_mbps is not None and 0.064 <= radio.rate_mbps <= 0.256
    assert radio.loss is not None and 0 < radio.loss.mean_loss <= 0.05
