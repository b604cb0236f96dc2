from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.cli import build_parser, main
from edgecloud.wireless.dataset import load


def test_data_command_writes_shards(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["wireless", "data", "--scenes", "3", "--unseen-scenes", "1", "--out", str(tmp_path)]) == 0
    assert "main: 3 scenes" in capsys.readouterr().out
    assert len(load(tmp_path)) == 4


def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["wireless", "data", "--scenes", "0", "--out", "x"])
    assert info.value.code == 2
    assert "--scenes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["wireless", "bench", "--config", "tpu"])
    assert info.value.code == 2
    assert "argument --config: invalid choice: 'tpu'" in capsys.readouterr().err
