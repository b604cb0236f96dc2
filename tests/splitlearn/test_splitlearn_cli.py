import json
from pathlib import Path

import pytest

from edgecloud.cli import build_parser, main

VERBS = ("train", "plan", "bench", "merge-bench", "node")


def test_splitlearn_verbs_are_registered(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["splitlearn", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(verb in out for verb in VERBS)


@pytest.mark.parametrize("verb", ["train", "plan", "bench", "node"])
def test_help_shows_every_default(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["splitlearn", verb, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: mnist)" in out and "(default: cnn)" in out and "(default: 8)" in out
    # Options whose default depends on the data set spell it out instead of "None".
    assert "(default: mnist 5:5,2.5:15,10:20,5:10; digits 20:5,10:15,40:20,20:10)" in out
    assert "(default: 32 on mnist, 16 on digits)" in out
    if verb in ("train", "bench"):
        assert "(default: 0.975)" in out


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
            "--target-accuracy",
            "0.9",
            "--dataset",
            "digits",
        ]
    )
    assert (args.json, args.plot, args.bandwidths, args.epochs) == ("o.json", "o.png", [1.0, 3.0], 1)
    assert (args.target_accuracy, args.dataset) == (0.9, "digits")


@pytest.mark.parametrize("ues", ["20", "0.5:10", "a:b"])
def test_bad_ues_are_a_usage_error_naming_the_option(ues: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["splitlearn", "plan", "--ues", ues])
    assert exit_info.value.code == 2
    assert "--ues" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plan", "--bandwidth-mhz", "0"], "expected a number > 0"),
        (["bench", "--bandwidths", "2", "-1"], "expected a number > 0"),
        (["bench", "--target-accuracy", "97.5"], r"expected an accuracy in (0, 1], got 97.5"),
        (["train", "--epochs", "two"], "expected an integer >= 1, got two"),
    ],
)
def test_bad_numbers_are_a_usage_error(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["splitlearn", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_plan_prints_settings_as_lines_and_the_three_plans(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["splitlearn", "plan", "--dataset", "digits", "--model", "mlp", "--ues", "10:10,20:20"]
    assert main([*argv, "--bandwidth-mhz", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("data: scikit-learn digits: 1,438 training / 359 test images")
    assert "UE0 10x slower at 10 dB, UE1 20x slower at 20 dB" in out
    assert "message latency" in out and "Config(" not in out and "UEConfig" not in out
    plans = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(plans) == {"sequential", "c2p2sl", "c2p2sl_fixed_cut"}
    # The fixed-cut plan is C2P2SL at sequential's cut: the same-cut comparison.
    cut = plans["sequential"].split("cut ")[1].split(",")[0]
    assert f"cut {cut}," in plans["c2p2sl_fixed_cut"]


def test_train_names_its_data_reports_progress_and_time_to_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "run.json"
    argv = ["splitlearn", "train", "--dataset", "digits", "--model", "mlp", "--ues", "2:20,2:20"]
    argv += ["--bandwidth-mhz", "50", "--syncs-per-epoch", "2", "--target-accuracy", "0.5", "--json", str(out_json)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("data: scikit-learn digits")
    assert "starting the BS and 2 UE processes" in out
    assert "trained 44 rounds in" in out and "final test accuracy" in out
    result = json.loads(out_json.read_text())
    assert [e[0] for e in result["evaluations"]] == [22, 44]
    reached = result["rounds_to_target"]
    assert reached is None or f"target 50% first reached after round {reached}" in out
