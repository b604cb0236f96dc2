"""Benchmark reports a newcomer can read: error reasons, tables not cut when piped, a 2×3 plot
whose axes one outlier does not stretch."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from rich.table import Table

from edgecloud.bench.metrics import RequestRecord, Slo, summarize
from edgecloud.bench.report import PIPED_WIDTH, error_reasons, plot, report_console, robust_limit
from edgecloud.cli import main

BAD_REQUEST = {"error": {"message": "max_tokens must be >= 1", "type": "invalid_request_error", "param": "max_tokens"}}


def test_error_reasons_name_the_servers_message() -> None:
    records = [
        RequestRecord(0, 0.0, error="http_400", error_detail=json.dumps(BAD_REQUEST)),
        RequestRecord(1, 0.0, error="http_400", error_detail=json.dumps(BAD_REQUEST)),
        RequestRecord(2, 0.0, error="timeout", error_detail="TimeoutError()"),
        RequestRecord(3, 0.0, error="http_503", error_detail="<html>  busy\n</html>"),
        RequestRecord(4, 0.0),
    ]
    assert error_reasons(records) == [
        "http_400 × 2: max_tokens must be >= 1 (param: max_tokens) (requests 0, 1)",
        "timeout × 1: TimeoutError() (request 2)",
        "http_503 × 1: <html> busy </html> (request 3)",
    ]
    many = [RequestRecord(i, 0.0, error="stream_error", error_detail=f'"reason {i}"') for i in range(5)]
    assert error_reasons(many, per_kind=2)[-1] == "stream_error: 3 other reasons (see the JSON's requests)"


def test_robust_limit_ignores_a_lone_outlier_but_not_a_tail() -> None:
    assert robust_limit([4.0, 4.5, 5.0, 5.5, 6.0, 900.0]) == 6.0
    tail = [float(x) for x in range(1, 21)]
    assert robust_limit(tail) == 20.0
    assert robust_limit([1.0] * 10 + [50.0] * 3) == 50.0  # 3 of 13 beyond the fence: a tail, kept


def test_tables_are_not_cut_when_piped() -> None:
    piped = io.StringIO()
    console = report_console(piped)
    assert console.width == PIPED_WIDTH
    table = Table()
    for column in ("tree", "heads", "dense ms", "cascade ms", "prefix ms", "vs dense", "vs cascade"):
        table.add_column(column)
    table.add_row("1,4,16,512_1024,256,128,32", "32/8", *["123.4"] * 5)
    console.print(table)
    assert "1,4,16,512_1024,256,128,32" in piped.getvalue() and "…" not in piped.getvalue()


def test_the_serving_plot_is_a_2x3_grid(tmp_path: Path) -> None:
    import matplotlib.image

    records = []
    for i in range(8):
        chunks = [0.05 + i + 0.005 * k for k in range(10)]
        records.append(RequestRecord(i, float(i), end_time=chunks[-1], chunk_times=chunks, output_tokens=10))
    records[3].chunk_times[-1] += 1.0  # one long gap
    records[3].end_time += 1.0
    path = tmp_path / "serve.png"
    plot(path, records, summarize(records, Slo()), title="check")
    height, width = matplotlib.image.imread(path).shape[:2]
    assert (width, height) == (1500, 850)


class _FakeServer(BaseHTTPRequestHandler):
    """Lists one model and answers every request with an OpenAI 400."""

    def do_GET(self) -> None:
        self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._send(400, BAD_REQUEST)

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_bench_serve_prints_why_requests_failed(
    refusing_server: str, tokenizer_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "serve", "--base-url", refusing_server, "--tokenizer", str(tokenizer_dir), "--num-requests", "3",
            "--input-len", "8", "--output-len", "4", "--quiet", "--json", str(tmp_path / "out.json")]  # fmt: skip
    assert main(argv) == 1  # nothing completed
    captured = capsys.readouterr()
    assert "http_400: 3" in captured.out
    assert "errors, by reason:\n  http_400 × 3: max_tokens must be >= 1 (param: max_tokens) (requests 0, 1, 2)" in (
        captured.out
    )
    assert captured.err.startswith("machine: ")
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["machine"]["self_contained"] is False and "load_average" in document["machine"]["start"]


def test_bench_serve_without_a_server_is_one_line(tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = ["bench", "serve", "--base-url", f"http://127.0.0.1:{port}", "--tokenizer", str(tokenizer_dir),
            "--num-requests", "1", "--quiet"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"edgecloud bench serve: error: cannot list models at http://127.0.0.1:{port}/v1/models: ")
    assert err.endswith("is the server running there (edgecloud serve)? Or pass --model to skip the listing\n")
