import asyncio
import socket
from pathlib import Path

import aiohttp
import pytest

from edgecloud.bench.client import Endpoint, send_request
from edgecloud.bench.serve import build_arrivals, build_workload
from edgecloud.bench.workload import BenchRequest, PromptVocab
from edgecloud.cli import build_parser


@pytest.fixture(scope="module")
def vocab(tokenizer_dir: Path) -> PromptVocab:
    return PromptVocab.from_dir(tokenizer_dir)


def parse(*argv: str) -> object:
    return build_parser().parse_args(["bench", "serve", *argv])


def write_mooncake(path: Path) -> Path:
    path.write_text(
        '{"timestamp": 0, "input_length": 1024, "output_length": 40, "hash_ids": [0, 1]}\n'
        '{"timestamp": 2000, "input_length": 1024, "output_length": 20, "hash_ids": [0, 2]}\n'
    )
    return path


def test_trace_workload_keeps_trace_times_unless_a_rate_is_given(vocab: PromptVocab, tmp_path: Path) -> None:
    trace = write_mooncake(tmp_path / "t.jsonl")
    args = parse("--trace", str(trace), "--input-scale", "0.0625", "--output-scale", "0.5", "--time-scale", "0.5")
    requests = build_workload(args, vocab)  # type: ignore[arg-type]
    assert [(len(r.prompt_ids), r.output_len) for r in requests] == [(64, 20), (64, 10)]
    assert requests[0].prompt_ids[:32] == requests[1].prompt_ids[:32]
    assert build_arrivals(args, requests) == [0.0, 1.0]  # type: ignore[arg-type]
    with_rate = parse("--trace", str(trace), "--request-rate", "inf")
    assert build_arrivals(with_rate, requests) == [0.0, 0.0]  # type: ignore[arg-type]


def test_synthetic_workloads_from_options(vocab: PromptVocab) -> None:
    random = build_workload(parse("--num-requests", "5", "--input-len", "9", "--output-len", "3"), vocab)  # type: ignore[arg-type]
    assert [(len(r.prompt_ids), r.output_len) for r in random] == [(9, 3)] * 5
    tree = parse("--workload", "shared-prefix", "--prefix-systems", "1", "--prefix-system-len", "4",
                 "--prefix-templates", "2", "--prefix-template-len", "2", "--prefix-requests", "3")
    assert len(build_workload(tree, vocab)) == 6  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--workload trace needs --trace PATH"):
        build_workload(parse("--workload", "trace"), vocab)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--request-rate", "0"], "argument --request-rate: must be > 0, got 0"),
        (["--burstiness", "-1"], "argument --burstiness: must be > 0, got -1"),
        (["--time-scale", "nan"], "argument --time-scale: must be > 0, got nan"),
        (["--num-requests", "0"], "argument --num-requests: must be >= 1, got 0"),
    ],
)
def test_rejects_non_positive_options(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2  # argparse's usage error
    assert message in capsys.readouterr().err


def test_request_bodies_for_both_apis() -> None:
    request = BenchRequest("hello", (1,), 7)
    completions = Endpoint("http://h:1/", "m").body(request)
    assert completions["prompt"] == "hello" and completions["max_tokens"] == 7 and completions["ignore_eos"]
    assert completions["stream_options"] == {"include_usage": True}
    chat = Endpoint("http://h:1", "m", api="chat", ignore_eos=False).body(request)
    assert chat["messages"] == [{"role": "user", "content": "hello"}] and "ignore_eos" not in chat
    assert Endpoint("http://h:1/", "m", api="chat").url == "http://h:1/v1/chat/completions"


def test_a_dead_endpoint_is_a_connect_error_not_an_exception() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound but not listening: connections are refused

        async def run() -> object:
            async with aiohttp.ClientSession() as session:
                return await send_request(session, Endpoint(f"http://127.0.0.1:{port}", "m"),
                                          BenchRequest("x", (1,), 2), 0, 0.0)

        record = asyncio.run(run())
    assert record.error == "connect"  # type: ignore[attr-defined]
    assert not record.ok  # type: ignore[attr-defined]
