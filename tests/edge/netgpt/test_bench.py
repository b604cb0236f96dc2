"""The bench's parts that need no model: the per-question answer cache, one network state of the
grid measured through a real netem proxy in front of the recorded cloud, and the policy evaluation
with its frontier check."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgecloud.edge.netgpt.agents import AnswerCache, Answered
from edgecloud.edge.netgpt.bench import _key, dominated, evaluate, measure_state, recorded_cloud, serve_app
from edgecloud.edge.netgpt.policy import PRICES


def answered(i: int, edge_ok: bool, cloud_ok: bool) -> Answered:
    request = {"model": "cloud", "messages": [{"role": "user", "content": f"question {i}"}], "tool_choice": "required"}
    response = {"id": f"r{i}", "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 500}}]}
    return Answered(id=f"q{i}", edge_ok=edge_ok, cloud_ok=cloud_ok, edge_valid=True, scores={"mean_prob": 0.5},
                    edge_s=0.2, cloud_s=0.3, request=request, cloud_response=response, tokens=300)


def test_answer_cache_survives_a_restart_and_keys_on_models_and_request(tmp_path: Path) -> None:
    path = tmp_path / "answers.jsonl"
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
    AnswerCache(path, "edge-a", "cloud-a").put(body, answered(1, True, False))
    again = AnswerCache(path, "edge-a", "cloud-a")
    assert again.get(body) == answered(1, True, False)
    assert again.get({**body, "max_tokens": 9}) is None
    assert AnswerCache(path, "edge-b", "cloud-a").get(body) is None  # another edge model answers anew
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=r"answers\.jsonl:2: not an answer record"):
        AnswerCache(path, "edge-a", "cloud-a")


def test_a_network_state_is_measured_through_netem_and_replays_recorded_answers() -> None:
    test = [answered(i, True, True) for i in range(3)]

    async def run() -> tuple[object, list[float]]:
        async with serve_app(recorded_cloud({_key(a.request): a.cloud_response for a in test})) as front:
            return await measure_state(50.0, 40.0, front, test)

    measured, times = asyncio.run(run())
    assert 35.0 <= measured.rtt_ms < 400.0  # type: ignore[attr-defined]
    assert measured.bandwidth_mbps > 5.0  # type: ignore[attr-defined]
    assert len(times) == 3 and all(t >= 0.035 for t in times)  # each exchange pays at least the RTT


def test_policies_are_evaluated_on_the_same_answers_and_dominance_is_strict() -> None:
    test = [answered(0, True, True), answered(1, False, True)]
    price = PRICES["standard"]
    edge = evaluate(test, [0.1, 0.1], price, ["edge", "edge"])
    mixed = evaluate(test, [0.1, 0.1], price, ["edge", "cloud"])
    assert edge == {"accuracy": 0.5, "accuracy_ci95": [0.0, 1.0], "cost": pytest.approx(0.04),
                    "latency_ms_p50": pytest.approx(200.0), "offload_rate": 0.0}
    assert mixed["accuracy"] == 1.0 and mixed["offload_rate"] == 0.5 and mixed["cost"] > edge["cost"]
    assert not dominated(mixed, [edge]) and not dominated(edge, [mixed])
    assert dominated({"accuracy": 0.5, "cost": 1.0}, [edge])
    assert not dominated(edge, [dict(edge)])  # an equal point does not dominate
