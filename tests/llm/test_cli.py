"""The engine's CLI: generate on a local model, random-model presets, bench engine end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud.cli import main


def test_generate_prints_json_lines_for_several_prompts(llama_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "--model", str(llama_dir), "--max-tokens", "4", "--temperature", "0",
                 "--kv-cache-memory-mb", "1", "--json", "hello", "edge"])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["prompt"] for line in lines] == ["hello", "edge"]
    assert all(line["finish_reason"] in ("length", "stop") for line in lines)


def test_generate_labels_each_prompt_as_text(llama_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "--model", str(llama_dir), "--max-tokens", "4", "--temperature", "0", "--n", "2",
                 "--kv-cache-memory-mb", "1", "hello", "edge"])
    assert code == 0
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("--- prompt")]
    assert headers == [f"--- prompt {i}, sample {j}: {p!r} (length)" for i, p in enumerate(["hello", "edge"])
                       for j in range(2)]


def test_generate_reports_bad_input_without_a_traceback(llama_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--model", str(llama_dir), "--max-tokens", "0", "x"]) == 2
    assert "error: max_tokens must be a positive integer, got 0" in capsys.readouterr().err


def test_bench_engine_writes_the_promised_fields(llama_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "engine.json"
    assert main(["bench", "engine", "--model", str(llama_dir), "--num-prompts", "4", "--input-len", "4:8",
                 "--output-len", "2:4", "--batch-size", "2", "--threads", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for field in ("engine_tok_s", "hf_tok_s", "speedup", "roofline_tok_s", "threads"):
        assert result[field] > 0
    assert result["threads"] == 1
    assert result["roofline_tok_s"] >= result["engine_tok_s"] * 0.99  # a bound, never beaten


def test_length_ranges_are_validated(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "engine", "--model", "x", "--input-len", "9:3"])
    assert "A <= B" in capsys.readouterr().err
