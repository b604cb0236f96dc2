"""What the server's /metrics histograms measure: streamed answers are timed when their chunks
reach the socket, after the engine produced them; unstreamed ones count in e2e only; TPOT is
(e2e − TTFT) / (tokens − 1), the client's formula; every metric is documented."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx
import pytest

from .conftest import ServerProcess
from .test_load import wait_for

DOCS = Path(__file__).resolve().parents[2] / "docs" / "server.md"
HISTOGRAMS = {
    "ttft": "edgecloud_time_to_first_token_seconds",
    "tpot": "edgecloud_time_per_output_token_seconds",
    "e2e": "edgecloud_e2e_request_latency_seconds",
    "engine_ttft": "edgecloud_engine_time_to_first_token_seconds",
    "engine_tpot": "edgecloud_engine_time_per_output_token_seconds",
}


def observed(server: ServerProcess, send: object, expect: str) -> dict[str, tuple[int, float]]:
    """Run ``send`` on an idle server; return each histogram's (count, sum) increase once the
    ``expect`` histogram has counted it."""
    wait_for(lambda: server.metrics()["edgecloud_num_requests_running"] == 0)
    before = server.metrics()
    send()  # type: ignore[operator]
    wait_for(lambda: server.metrics()[f"{HISTOGRAMS[expect]}_count"] > before.get(f"{HISTOGRAMS[expect]}_count", 0))
    after = server.metrics()
    return {
        key: (
            # a histogram nothing has observed yet is absent (a fresh server: this file run alone)
            round(after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)),
            after.get(f"{name}_sum", 0.0) - before.get(f"{name}_sum", 0.0),
        )
        for key, name in HISTOGRAMS.items()
    }


def test_a_streamed_answer_is_timed_at_the_socket_after_the_engine(server: ServerProcess) -> None:
    body = {"model": server.model, "prompt": "time me", "max_tokens": 9, "stream": True, "ignore_eos": True}

    def send() -> None:
        with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            assert list(response.iter_lines())[-2:] == ["data: [DONE]", ""]

    seen = observed(server, send, "ttft")
    assert {key: count for key, (count, _) in seen.items()} == dict.fromkeys(HISTOGRAMS, 1)
    ttft, tpot, e2e = seen["ttft"][1], seen["tpot"][1], seen["e2e"][1]
    # The first chunk leaves after the engine sampled its token, and the answer ends after it.
    assert 0 < seen["engine_ttft"][1] <= ttft < e2e
    assert tpot == pytest.approx((e2e - ttft) / (9 - 1), rel=1e-9)


def test_a_stream_left_after_its_first_chunk_still_counts_its_ttft(server: ServerProcess) -> None:
    body = {"model": server.model, "prompt": "leave early", "max_tokens": 500, "stream": True, "ignore_eos": True}
    e2e_before = server.metrics().get(f"{HISTOGRAMS['e2e']}_count", 0)

    def send() -> None:
        with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=60) as response:
            assert next(response.iter_lines()).startswith("data: ")  # then hang up mid-stream

    seen = observed(server, send, "ttft")
    assert seen["ttft"][0] == 1 and seen["ttft"][1] > 0
    wait_for(lambda: server.metrics()["edgecloud_num_requests_running"] == 0)  # aborted, never finished
    assert server.metrics().get(f"{HISTOGRAMS['e2e']}_count", 0) == e2e_before


def test_an_unstreamed_answer_counts_in_e2e_and_the_engine_histograms_only(server: ServerProcess) -> None:
    body = {"model": server.model, "prompt": "time me whole", "max_tokens": 5, "ignore_eos": True}

    def send() -> None:
        response = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60)
        assert response.json()["usage"]["completion_tokens"] == 5

    seen = observed(server, send, "e2e")
    counts = {key: count for key, (count, _) in seen.items()}
    assert counts == {"ttft": 0, "tpot": 0, "e2e": 1, "engine_ttft": 1, "engine_tpot": 1}
    assert 0 < seen["engine_ttft"][1] < seen["e2e"][1]


def test_every_metric_is_documented(server: ServerProcess) -> None:
    text = httpx.get(f"{server.base_url}/metrics").text
    # prometheus_client's *_created series (when a counter or histogram began) are not ours to document.
    exposed = {name for name in re.findall(r"^# HELP (edgecloud_\w+) ", text, re.M) if not name.endswith("_created")}
    assert len(exposed) >= 20
    documented = set(re.findall(r"`(edgecloud_\w+)", DOCS.read_text()))
    assert exposed - documented == set()


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop has no Windows build (the server falls back to asyncio)")
def test_the_server_says_it_runs_on_uvloop_and_httptools(server: ServerProcess) -> None:
    assert server.banner.endswith("event loop uvloop, HTTP httptools)")
