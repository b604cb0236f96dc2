import itertools
from pathlib import Path

import pytest

from edgecloud.bench.traces import (
    TraceFormatError,
    TraceRequest,
    ideal_prefix_hit_rate,
    read_azure_csv,
    read_mooncake_jsonl,
    read_trace,
)

SHARED_TRACES = Path("/work/shared/traces")


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_azure_rows_become_offsets_from_the_first_request(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.csv",
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:16:00.0000000,10,0\n",
    )
    trace = read_azure_csv(path)
    assert [(r.input_len, r.output_len) for r in trace] == [(374, 44), (396, 109), (10, 0)]
    assert trace[0].arrival_s == 0.0
    assert trace[1].arrival_s == pytest.approx(4.314579, abs=1e-6)
    assert trace[2].arrival_s == pytest.approx(13.31941, abs=1e-6)
    assert read_azure_csv(path, limit=2) == trace[:2]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("2023-11-16 18:15:46.68,x,4", "line 2: ContextTokens must be an integer >= 0, got 'x'"),
        ("2023-11-16 18:15:46.68,4,-1", "line 2: GeneratedTokens must be an integer >= 0, got -1"),
        ("yesterday,4,4", "line 2: TIMESTAMP must look like"),
    ],
)
def test_azure_bad_rows_name_the_line_and_field(tmp_path: Path, row: str, message: str) -> None:
    path = write(tmp_path / "bad.csv", f"TIMESTAMP,ContextTokens,GeneratedTokens\n{row}\n")
    with pytest.raises(TraceFormatError, match=message):
        read_azure_csv(path)


def test_azure_header_is_checked(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match="header must contain"):
        read_azure_csv(write(tmp_path / "h.csv", "time,in,out\n1,2,3\n"))


def test_mooncake_lines_keep_hash_ids_and_convert_ms(tmp_path: Path) -> None:
    path = write(
        tmp_path / "m.jsonl",
        '{"timestamp": 1000, "input_length": 1030, "output_length": 5, "hash_ids": [0, 1, 2]}\n'
        "\n"
        '{"timestamp": 3500, "input_length": 600, "output_length": 7, "hash_ids": [0, 3]}\n',
    )
    assert read_mooncake_jsonl(path) == [
        TraceRequest(0.0, 1030, 5, (0, 1, 2)),
        TraceRequest(2.5, 600, 7, (0, 3)),
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "line 1: not a JSON object"),
        ("[1, 2]", "line 1: expected a JSON object, got list"),
        ('{"timestamp": 0, "input_length": 3}', r"line 1: missing field\(s\) \['output_length'\]"),
        ('{"timestamp": -1, "input_length": 3, "output_length": 1}', "timestamp must be a number of ms"),
        ('{"timestamp": 0, "input_length": 3, "output_length": 1, "hash_ids": ["a"]}', "hash_ids must be"),
    ],
)
def test_mooncake_bad_lines_name_the_line_and_field(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(TraceFormatError, match=message):
        read_mooncake_jsonl(write(tmp_path / "bad.jsonl", line + "\n"))


def test_read_trace_dispatches_on_extension(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match=r"\.csv \(Azure LLM 2023\) or \.jsonl \(Mooncake\)"):
        read_trace(write(tmp_path / "t.txt", ""))


@pytest.mark.skipif(not SHARED_TRACES.is_dir(), reason="shared traces not on this machine")
@pytest.mark.parametrize(
    "name", ["azure_llm_2023_conv.csv", "azure_llm_2023_code.csv", "mooncake_conversation.jsonl",
             "mooncake_synthetic.jsonl"],
)
def test_the_published_traces_parse(name: str) -> None:
    trace = read_trace(SHARED_TRACES / name, limit=2000)
    assert len(trace) == 2000
    assert trace[0].arrival_s == 0.0
    assert all(b.arrival_s >= a.arrival_s for a, b in itertools.pairwise(trace))
    assert all(r.input_len > 0 for r in trace)


def test_ideal_prefix_hit_rate_counts_reused_block_chains() -> None:
    trace = [
        TraceRequest(0, 30, 0, (0, 1, 2)),  # 3 new blocks
        TraceRequest(1, 25, 0, (0, 1, 3)),  # reuses 0, 1: 20 tokens
        TraceRequest(2, 20, 0, (4, 1)),  # block 1 after 4 is a different chain: no reuse
        TraceRequest(3, 25, 0, (0, 1, 3, 5)),  # reuses 0, 1, 3: 30 tokens, capped at the prompt's 25
    ]
    assert ideal_prefix_hit_rate(trace, block_tokens=10) == (20 + 25) / 100
    assert ideal_prefix_hit_rate([]) == 0.0
