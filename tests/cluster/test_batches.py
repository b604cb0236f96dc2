"""The OpenAI Batch API on the router (issue #19), as a user drives it: the official ``openai``
client uploads a JSONL file, creates a batch, follows it and reads the output and error files.
The router is killed (SIGKILL) mid-batch and started again on the same directory (``make bench``:
two cluster starts; the default suite runs the resume logic in process): the batch completes with
every line answered exactly once, and each answer is the greedy answer the same cluster gives
online. Malformed lines go to the error file with the reason; the rest run."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import openai
import pytest
from fastapi import FastAPI

from edgecloud.cli import main
from edgecloud.cluster.batches import BatchRunner, CreateBatch, mount_batch_api, parse_input
from edgecloud.llm.async_engine import AsyncEngine
from edgecloud.llm.config import EngineConfig
from edgecloud.server.app import ServerSettings, build_app
from edgecloud.sim.real import RealCluster

ENGINE = ["--threads", "1", "--kv-cache-memory-mb", "4", "--block-size", "4", "--dtype", "float32"]


def test_malformed_lines_are_named() -> None:
    good = {"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}
    data = "\n".join([
        json.dumps(good), "{not json", json.dumps({**good, "custom_id": "a"}),
        json.dumps({**good, "custom_id": "b", "url": "/v1/chat/completions"}),
        json.dumps({**good, "custom_id": "c", "method": "GET"}), "", json.dumps({**good, "custom_id": ""}),
        json.dumps({**good, "custom_id": "d", "body": {"stream": True}}), json.dumps([1]),
    ]).encode()
    lines, errors = parse_input(data, "/v1/completions", "batch_x")
    assert [(line.number, line.custom_id) for line in lines] == [(1, "a")]
    messages = [e["error"]["message"] for e in errors]
    assert [m.split(":")[0] for m in messages] == ["line 2", "line 3", "line 4", "line 5", "line 7", "line 8",
                                                   "line 9"]
    for needle, message in zip(["not valid JSON", "used by an earlier line", "url must be", "method must be",
                                "custom_id must be", "stream must be false", "JSON object"], messages, strict=True):
        assert needle in message
    assert errors[0]["id"] == "batch_req_x_2" and errors[1]["custom_id"] == "a"


def _wait(client: openai.OpenAI, batch_id: str, done: object, timeout_s: float = 90.0) -> openai.types.Batch:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if done(batch):  # type: ignore[operator]
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} not there in {timeout_s} s: {batch}")


def test_a_restarted_runner_answers_each_line_once(demo_dir: Path, tmp_path: Path) -> None:
    """The resume logic in process (fast): the runner stopped mid-batch (its state left on disk as a
    kill leaves it, plus a torn last line), a new app over the same directory finishes the batch."""
    # Enough work that the batch cannot finish between the poll that sees 3 done and the stop: with 16
    # short requests a faster engine finished them all in that window, and nothing was left to resume.
    total = 48
    lines = [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                         "body": {"model": "demo", "prompt": [5, 6, 7 + i % 5], "max_tokens": 48, "temperature": 0,
                                  "ignore_eos": True}}) for i in range(total)]

    def app_over(directory: Path) -> tuple[FastAPI, BatchRunner]:
        config = EngineConfig(model=str(demo_dir), dtype="float32", kv_cache_memory_mb=4.0, block_size=4,
                              num_threads=1)
        app = build_app(AsyncEngine(config, core="thread"), ServerSettings(served_model_name="demo"))
        return app, mount_batch_api(app, directory, concurrency=2)

    async def first() -> str:
        app, runner = app_over(tmp_path)
        async with app.router.lifespan_context(app):
            file_id = runner.store.add_file("\n".join(lines).encode(), "in.jsonl", "batch")["id"]
            batch_id = runner.create(CreateBatch(input_file_id=file_id, endpoint="/v1/completions"))["id"]
            while runner.store.batch(batch_id)["request_counts"]["completed"] < 3:
                await asyncio.sleep(0.02)
        return batch_id

    async def second(batch_id: str) -> dict:
        app, runner = app_over(tmp_path)
        async with app.router.lifespan_context(app):
            return await runner.wait(batch_id)

    batch_id = asyncio.run(first())
    state = json.loads((tmp_path / "batches" / f"{batch_id}.json").read_text())
    assert state["status"] == "in_progress" and 3 <= state["request_counts"]["completed"] < total
    with open(tmp_path / "batches" / f"{batch_id}.output.jsonl", "ab") as f:
        f.write(b'{"id": "batch_req_')  # a write cut short by the kill
    done = asyncio.run(second(batch_id))
    assert done["status"] == "completed" and done["request_counts"] == {"total": total, "completed": total, "failed": 0}
    results = [json.loads(line) for line in (tmp_path / "files" / done["output_file_id"]).read_text().splitlines()]
    assert sorted(r["custom_id"] for r in results) == sorted(f"r{i}" for i in range(total))


@pytest.mark.bench
@pytest.mark.timeout(240)
def test_batch_survives_a_router_kill(demo_dir: Path, tmp_path: Path) -> None:
    args = ["--instances", "1", "--model", str(demo_dir), *ENGINE, "--batch-dir", str(tmp_path / "state"),
            "--batch-concurrency", "2"]
    prompts = {f"req-{i}": [5 + i % 7, 6, 7 + i % 3, 8] for i in range(24)}
    lines = [json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/completions",
                         "body": {"model": "MODEL", "prompt": p, "max_tokens": 32, "temperature": 0,
                                  "ignore_eos": True}}) for cid, p in prompts.items()]
    lines.insert(5, "this line is not JSON")
    with RealCluster(args, start_timeout_s=180) as cluster:
        client = openai.OpenAI(base_url=f"{cluster.base_url}/v1", api_key="unused", max_retries=0)
        model = client.models.list().data[0].id
        data = "\n".join(lines).replace('"MODEL"', json.dumps(model)).encode()
        uploaded = client.files.create(file=("offline.jsonl", data), purpose="batch")
        assert client.files.retrieve(uploaded.id).bytes == len(data)
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions",
                                      completion_window="24h")
        assert batch.status in ("validating", "in_progress")
        partway = _wait(client, batch.id, lambda b: b.request_counts and b.request_counts.completed >= 2)
        assert partway.request_counts.total == 25
        assert cluster.process is not None
        cluster.process.kill()  # no goodbye: what is on disk is all that is left
        cluster.process.wait()
    with RealCluster(args, start_timeout_s=180) as cluster:
        client = openai.OpenAI(base_url=f"{cluster.base_url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.BadRequestError, match="purpose"):
            client.files.create(file=("x.jsonl", b"{}"), purpose="fine-tune")
        done = _wait(client, batch.id, lambda b: b.status == "completed")
        assert done.request_counts.completed == 24 and done.request_counts.failed == 1
        results = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
        errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
        assert sorted(r["custom_id"] for r in results) == sorted(prompts)  # each line answered exactly once
        assert errors[0]["error"]["message"].startswith("line 6: not valid JSON")
        for record in results[:3]:
            body = record["response"]["body"]
            assert record["response"]["status_code"] == 200 and body["service_tier"] == "flex"
            online = client.completions.create(model=model, prompt=prompts[record["custom_id"]], max_tokens=32,
                                               temperature=0, extra_body={"ignore_eos": True})
            assert body["choices"][0]["text"] == online.choices[0].text
        assert client.batches.cancel(done.id).status == "completed"  # a finished batch stays finished
        second = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions",
                                       completion_window="24h")
        assert client.batches.cancel(second.id).status == "cancelling"
        cancelled = _wait(client, second.id, lambda b: b.status == "cancelled")
        assert cancelled.request_counts.completed < 24


def test_batch_run_without_a_server(demo_dir: Path, tmp_path: Path) -> None:
    lines = [json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/completions",
                         "body": {"model": "demo", "prompt": [5, 6, 7 + i], "max_tokens": 4, "temperature": 0}})
             for i in range(4)]
    (tmp_path / "in.jsonl").write_text("\n".join([*lines, "not json"]) + "\n")
    code = main(["batch", "run", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"), "--model", str(demo_dir),
                 "--served-model-name", "demo", *ENGINE])
    assert code == 0
    results = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    answered = sorted(r["custom_id"] for r in results if r["response"] and r["response"]["status_code"] == 200)
    assert answered == ["r0", "r1", "r2", "r3"]
    assert [r["error"]["message"] for r in results if r["error"]] == ["line 5: not valid JSON (Expecting value: "
                                                                      "line 1 column 1 (char 0))"]
