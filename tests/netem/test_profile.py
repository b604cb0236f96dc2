"""Profiles, schedules and their validation: bad input names the field and the allowed range."""

import json
import math
from pathlib import Path

import pytest

from edgecloud.netem import (
    PROFILES,
    Bernoulli,
    GilbertElliott,
    GilbertElliottTime,
    LinkProfile,
    Schedule,
    profile_from_dict,
)


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


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: GilbertElliottTime(0.0, 20.0),
            r"GilbertElliottTime\.mean_good_ms must be > 0 \(math\.inf: never bad\), got 0\.0",
        ),
        (lambda: GilbertElliottTime(math.nan, 20.0), r"GilbertElliottTime\.mean_good_ms must be > 0"),
        (
            lambda: GilbertElliottTime(100.0, math.inf),
            r"GilbertElliottTime\.mean_bad_ms must be a finite number > 0 "
            r"\(otherwise the bad state is absorbing\), got inf",
        ),
        (lambda: GilbertElliottTime(100.0, -5.0), r"GilbertElliottTime\.mean_bad_ms must be .* got -5\.0"),
        (lambda: GilbertElliottTime(100.0, "20"), r"GilbertElliottTime\.mean_bad_ms must be .* got '20'"),
        (
            lambda: GilbertElliottTime(100.0, 20.0, loss_in_good=1.5),
            r"GilbertElliottTime\.loss_in_good must be a probability in \[0, 1\], got 1\.5",
        ),
        (
            lambda: GilbertElliottTime.from_mean(1.0, 20.0),
            r"GilbertElliottTime loss_rate must be in \[0, 1\), got 1\.0",
        ),
        (lambda: GilbertElliottTime.from_mean(-0.1, 20.0), r"loss_rate must be in \[0, 1\), got -0\.1"),
        (
            lambda: GilbertElliottTime.from_mean(0.1, 0.0),
            r"GilbertElliottTime burst_ms must be a finite number > 0, got 0\.0",
        ),
        (lambda: GilbertElliottTime.from_mean(0.1, math.inf), r"burst_ms must be a finite number > 0, got inf"),
    ],
)
def test_bad_time_based_loss_models_are_rejected(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()  # type: ignore[operator]


@pytest.mark.parametrize("loss_rate", [0.0, 0.01, 0.2, 0.9])
@pytest.mark.parametrize("burst_ms", [0.5, 20.0, 1000.0])
def test_time_based_from_mean_round_trips(loss_rate: float, burst_ms: float) -> None:
    model = GilbertElliottTime.from_mean(loss_rate, burst_ms)
    assert model.mean_loss == pytest.approx(loss_rate, abs=1e-12)
    assert model.bad_share == pytest.approx(loss_rate, abs=1e-12)
    assert model.mean_burst_ms == model.mean_bad_ms == burst_ms
    assert (model.loss_in_good, model.loss_in_bad) == (0.0, 1.0)
    if loss_rate == 0.0:
        assert model.mean_good_ms == math.inf  # never turns bad
    else:
        assert model.mean_good_ms == pytest.approx(burst_ms * (1 - loss_rate) / loss_rate)


def test_time_based_mean_loss_with_lossy_states() -> None:
    model = GilbertElliottTime(mean_good_ms=300.0, mean_bad_ms=100.0, loss_in_good=0.01, loss_in_bad=0.5)
    assert model.bad_share == pytest.approx(0.25)
    assert model.mean_loss == pytest.approx(0.75 * 0.01 + 0.25 * 0.5)


@pytest.mark.parametrize("bad", [False, True])
@pytest.mark.parametrize("elapsed_s", [0.0, 0.001, 0.02, 0.3, 10.0, -0.02])
def test_time_based_transition_is_the_continuous_time_chains(bad: bool, elapsed_s: float) -> None:
    model = GilbertElliottTime(mean_good_ms=80.0, mean_bad_ms=20.0)
    a, b = 1 / 0.080, 1 / 0.020  # per second
    stationary = a / (a + b)
    p_bad = stationary + (float(bad) - stationary) * math.exp(-(a + b) * abs(elapsed_s))
    assert model.p_switch(bad, elapsed_s) == pytest.approx(1 - p_bad if bad else p_bad, abs=1e-12)
    if elapsed_s == 0.0:
        assert model.p_switch(bad, elapsed_s) == 0.0  # exactly: no time, no move


def test_time_based_model_is_a_link_profile_loss() -> None:
    model = GilbertElliottTime.from_mean(0.05, 20.0)
    assert LinkProfile(loss=model).loss is model


def test_time_based_loss_from_json(tmp_path: Path) -> None:
    path = tmp_path / "schedule.json"
    path.write_text(
        json.dumps(
            [
                {"at_s": 0, "loss": {"model": "gilbert-elliott-time", "mean": 0.05, "burst_ms": 40}},
                {"at_s": 10, "loss": {"model": "gilbert-elliott-time", "mean": 0.05}},
                {"at_s": 20, "loss": {"model": "gilbert-elliott-time", "mean_good_ms": 380, "mean_bad_ms": 20}},
                {
                    "at_s": 30,
                    "profile": "lte",
                    "loss": {
                        "model": "gilbert-elliott-time",
                        "mean_good_ms": 300,
                        "mean_bad_ms": 100,
                        "loss_in_good": 0.01,
                        "loss_in_bad": 0.5,
                    },
                },
            ]
        )
    )
    schedule = Schedule.from_json(path)
    assert schedule.at(0).loss == GilbertElliottTime.from_mean(0.05, 40.0)
    assert schedule.at(10).loss == GilbertElliottTime.from_mean(0.05, 20.0)  # the default burst_ms
    assert schedule.at(20).loss == GilbertElliottTime(380.0, 20.0)
    assert schedule.at(30) == LinkProfile(
        **{**PROFILES["lte"].__dict__, "loss": GilbertElliottTime(300.0, 100.0, 0.01, 0.5)}
    )


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
        (
            {"loss": {"model": "pareto"}},
            "loss model must be one of 'bernoulli', 'gilbert-elliott', 'gilbert-elliott-time', got 'pareto'",
        ),
        (
            {"loss": {"model": "gilbert-elliott-time", "mean": 0.05, "burst_len": 3}},
            r"""loss model 'gilbert-elliott-time' given by "mean" takes only "mean" and "burst_ms", """
            r"""got unknown key\(s\) \['burst_len'\]""",
        ),
        (
            {"loss": {"model": "gilbert-elliott", "mean": 0.05, "burst_ms": 20}},
            r"""takes only "mean" and "burst_len", got unknown key\(s\) \['burst_ms'\]""",
        ),
        ({"loss": {"model": "gilbert-elliott-time", "mean_good_ms": 0, "mean_bad_ms": 20}}, "mean_good_ms must be > 0"),
        ({"loss": 2}, r"loss\.p must be a probability"),
        (
            {"loss": {"model": "gilbert-elliott-time", "burst_ms": 20}},
            r"""loss model 'gilbert-elliott-time': "burst_ms" needs "mean" \(the long-run loss rate\) beside it; """
            r"""or give the chain by its fields \['mean_good_ms', 'mean_bad_ms', 'loss_in_good', 'loss_in_bad'\]""",
        ),
        (
            {"loss": {"model": "gilbert-elliott", "burst_len": 3}},
            r"""loss model 'gilbert-elliott': "burst_len" needs "mean" """,
        ),
        (
            {"loss": {"model": "gilbert-elliott-time", "mean_good_ms": 380}},
            r"""loss model 'gilbert-elliott-time' takes \['mean_good_ms', 'mean_bad_ms', 'loss_in_good', """
            r"""'loss_in_bad'\] \(or "mean" and "burst_ms"\); missing key\(s\) \['mean_bad_ms'\]""",
        ),
        (
            {"loss": {"model": "bernoulli", "p": 0.1, "q": 0.2}},
            r"loss model 'bernoulli' takes \['p'\]; unknown key\(s\) \['q'\]",
        ),
        ({"loss": {"model": "bernoulli"}}, r"missing key\(s\) \['p'\]"),
        ({"loss": "often"}, r'loss must be a probability, an object with "model", or null, got \'often\''),
        # JSON's true is not a number.
        ({"loss": True}, r"loss\.p must be a probability in \[0, 1\], got True"),
        ({"loss": {"model": "bernoulli", "p": True}}, r"Bernoulli\.p must be a probability .* got True"),
        ({"loss": {"model": "gilbert-elliott-time", "mean": True}}, r"loss_rate must be in \[0, 1\), got True"),
        ({"loss": {"model": "gilbert-elliott", "mean": 0.1, "burst_len": True}}, "burst_len must be >= 1"),
        (
            {"loss": {"model": "gilbert-elliott-time", "mean": 0.1, "burst_ms": True}},
            "burst_ms must be a finite number > 0, got True",
        ),
        (
            {"loss": {"model": "gilbert-elliott-time", "mean_good_ms": True, "mean_bad_ms": 20}},
            "mean_good_ms must be > 0",
        ),
        ({"delay_ms": True}, r"LinkProfile\.delay_ms must be a finite number >= 0, got True"),
        ({"rate_mbps": True}, r"LinkProfile\.rate_mbps must be > 0 or None"),
        ({"queue_bytes": True}, r"LinkProfile\.queue_bytes must be an integer >= 1, got True"),
    ],
)
def test_profile_from_dict_rejects_bad_specs(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        profile_from_dict(spec)


def test_schedule_times_must_be_numbers() -> None:
    with pytest.raises(ValueError, match=r'schedule entry 1: "at_s" must be a finite number of seconds, got True'):
        Schedule.from_json([{"at_s": 0}, {"at_s": True, "delay_ms": 5}])
    with pytest.raises(ValueError, match=r'schedule entry 0: "at_s" must be .* got \'0\''):
        Schedule.from_json([{"at_s": "0"}])


def test_both_gilbert_elliott_chains_share_their_stationary_loss() -> None:
    # One formula for both: the state losses weighted by the share of the bad state.
    counted = GilbertElliott(p_good_to_bad=0.1, p_bad_to_good=0.3, loss_in_good=0.01, loss_in_bad=0.5)
    timed = GilbertElliottTime(mean_good_ms=30.0, mean_bad_ms=10.0, loss_in_good=0.01, loss_in_bad=0.5)
    assert counted.bad_share == pytest.approx(0.25) and timed.bad_share == pytest.approx(0.25)
    assert counted.mean_loss == pytest.approx(timed.mean_loss) == pytest.approx(0.75 * 0.01 + 0.25 * 0.5)
    still = GilbertElliott(p_good_to_bad=0.0, p_bad_to_good=0.0, loss_in_good=0.02)
    assert still.bad_share == 0.0 and still.mean_loss == 0.02  # a chain that never moves stays good
    for make in (lambda: GilbertElliott(0.1, 0.3, loss_in_good=True), lambda: GilbertElliottTime(30.0, 10.0, 0.0, 2)):
        with pytest.raises(ValueError, match=r"\.loss_in_(good|bad) must be a probability in \[0, 1\]"):
            make()


def test_named_profiles_match_their_descriptions() -> None:
    wifi, radio = PROFILES["wifi"], PROFILES["tactical-radio"]
    assert 2 * wifi.delay_ms <= 10 and wifi.rate_mbps is not None and 10 <= wifi.rate_mbps <= 100
    assert wifi.loss is not None and wifi.loss.mean_loss <= 0.005
    assert radio.delay_ms == pytest.approx(100 * wifi.delay_ms)
    assert radio.rate_mbps is not None and 0.064 <= radio.rate_mbps <= 0.256
    assert radio.loss is not None and 0 < radio.loss.mean_loss <= 0.05
