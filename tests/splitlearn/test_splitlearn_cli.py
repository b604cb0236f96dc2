import pytest

from edgecloud.cli import build_parser, main


def test_splitlearn_verbs_are_registered(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["splitlearn", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(verb in out for verb in ("train", "plan", "bench"))


def test_bench_options_parse() -> None:
    args = build_parser().parse_args(
        [
            "splitlearn",
            "bench",
            "--json",
            "o.json",
            "--plot",
            "o.png",
            "--bandwidths",
            "1",
            "3",
            "--epochs",
            "1",
        ]
    )
    assert (args.json, args.plot, args.bandwidths, args.epochs) == ("o.json", "o.png", [1.0, 3.0], 1)


@pytest.mark.parametrize("ues", ["20", "0.5:10", "a:b"])
def test_bad_ues_are_a_usage_error_naming_the_option(ues: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["splitlearn", "plan", "--ues", ues])
    assert exit_info.value.code == 2
    assert "--ues" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["plan", "--bandwidth-mhz", "0"], ["bench", "--bandwidths", "2", "-1"]])
def test_non_positive_bandwidth_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["splitlearn", *argv])
    assert exit_info.value.code == 2
    assert "expected a number > 0" in capsys.readouterr().err


def test_plan_prints_the_three_plans(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["splitlearn", "plan", "--model", "mlp", "--ues", "10:10,20:20", "--bandwidth-mhz", "2"]) == 0
    out = capsys.readouterr().out
    assert "measured message latency" in out
    for name in ("sequential", "c2p2sl ", "c2p2sl_fixed_cut"):
        assert name in out
    assert "cut=2" in out  # the fixed cut of the 4-block MLP is its middle
