import pytest

from edgecloud.cli import build_parser, main


def test_help_lists_bench_and_exits_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "bench" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["no-such-system"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'no-such-system'" in capsys.readouterr().err
