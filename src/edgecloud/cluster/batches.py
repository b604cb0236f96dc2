"""The OpenAI Batch API (issue #19): offline jobs the way users submit them, run as ``flex`` work.

``POST /v1/files`` takes a JSONL file of requests (``purpose=batch``); ``POST /v1/batches`` runs
one against ``/v1/chat/completions`` or ``/v1/completions``; ``GET /v1/batches/{id}`` shows its
progress (``request_counts``); ``POST /v1/batches/{id}/cancel`` stops it; the output and error
files come back through ``GET /v1/files/{id}/content``. Each line
``{"custom_id", "method": "POST", "url", "body"}`` is sent through the server's own endpoint (in
process, over ASGI) with ``service_tier: "flex"``, so it is validated, routed and answered exactly
as an online request, only at the offline tier. A malformed line goes to the error file with the
reason, naming its line; the others run.

Durable: a batch's state is a JSON file, and every answered line is appended (and synced) to its
partial output or error file before it counts as done. A router restarted mid-batch resumes each
unfinished batch from those files: lines already answered are not sent again, lines in flight at
the kill (never written) are sent again, so each line is answered exactly once. A line torn by the
kill (a partial last line) is cut off and its request sent again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict

from edgecloud.server.errors import APIError

log = logging.getLogger(__name__)

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
TERMINAL = ("completed", "failed", "cancelled", "expired")
WINDOW_S = 24 * 3600

# Sends one request body to an endpoint of the server; returns (HTTP status, JSON body).
Send = Callable[[str, dict[str, Any]], Awaitable[tuple[int, Any]]]


def _new_id(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(12)}"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class BatchStore:
    """Files and batches under one directory: ``files/<id>`` (content) with ``files/<id>.json``
    (its object), ``batches/<id>.json`` (the batch object) and the partial result files of a
    running batch, ``batches/<id>.output.jsonl`` and ``batches/<id>.errors.jsonl``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.files = self.root / "files"
        self.batches = self.root / "batches"
        self.files.mkdir(parents=True, exist_ok=True)
        self.batches.mkdir(parents=True, exist_ok=True)

    # -- files --------------------------------------------------------------------------------

    def add_file(self, data: bytes, filename: str, purpose: str) -> dict[str, Any]:
        file_id = _new_id("file-")
        _write_atomic(self.files / file_id, data)
        return self._register(file_id, len(data), filename, purpose)

    def _register(self, file_id: str, size: int, filename: str, purpose: str) -> dict[str, Any]:
        obj = {"id": file_id, "object": "file", "bytes": size, "created_at": int(time.time()),
               "filename": filename, "purpose": purpose, "status": "processed", "status_details": None}
        _write_atomic(self.files / f"{file_id}.json", json.dumps(obj).encode())
        return obj

    def adopt_file(self, path: Path, filename: str, purpose: str) -> dict[str, Any]:
        """Makes an existing file (a finished batch's results) a file of the store."""
        file_id = _new_id("file-")
        os.replace(path, self.files / file_id)
        return self._register(file_id, (self.files / file_id).stat().st_size, filename, purpose)

    def file(self, file_id: str) -> dict[str, Any]:
        path = self.files / f"{file_id}.json"
        if "/" in file_id or not path.is_file():
            raise APIError(404, f"no file with id {file_id!r}", "file_id", "file_not_found")
        return json.loads(path.read_text())

    def content(self, file_id: str) -> bytes:
        self.file(file_id)
        return (self.files / file_id).read_bytes()

    def list_files(self) -> list[dict[str, Any]]:
        objs = [json.loads(p.read_text()) for p in self.files.glob("*.json")]
        return sorted(objs, key=lambda o: (o["created_at"], o["id"]))

    # -- batches ------------------------------------------------------------------------------

    def save(self, batch: dict[str, Any]) -> None:
        _write_atomic(self.batches / f"{batch['id']}.json", json.dumps(batch).encode())

    def batch(self, batch_id: str) -> dict[str, Any]:
        path = self.batches / f"{batch_id}.json"
        if "/" in batch_id or not path.is_file():
            raise APIError(404, f"no batch with id {batch_id!r}", "batch_id", "batch_not_found")
        return json.loads(path.read_text())

    def list_batches(self) -> list[dict[str, Any]]:
        objs = [json.loads(p.read_text()) for p in self.batches.glob("*.json")]
        return sorted(objs, key=lambda o: (o["created_at"], o["id"]))

    def partial(self, batch_id: str, kind: str) -> Path:
        return self.batches / f"{batch_id}.{kind}.jsonl"


@dataclass(frozen=True)
class BatchLine:
    """One valid request line: its number in the file (from 1), ``custom_id`` and body."""

    number: int
    custom_id: str
    body: dict[str, Any]


def result_id(batch_id: str, number: int) -> str:
    """The id of line ``number``'s result: fixed by the line, so a resumed batch knows it."""
    return f"batch_req_{batch_id.removeprefix('batch_')}_{number}"


def parse_input(data: bytes, endpoint: str, batch_id: str) -> tuple[list[BatchLine], list[dict[str, Any]]]:
    """The valid lines of a batch's input file, and an error record for each malformed one."""
    lines: list[BatchLine] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        custom_id = None
        try:
            try:
                item = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"not valid JSON ({error})") from None
            if not isinstance(item, dict):
                raise ValueError(f"must be a JSON object, got {type(item).__name__}")
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                custom_id = None
                raise ValueError("custom_id must be a non-empty string")
            if custom_id in seen:
                raise ValueError(f"custom_id {custom_id!r} is used by an earlier line")
            if item.get("method") != "POST":
                raise ValueError(f"method must be 'POST', got {item.get('method')!r}")
            if item.get("url") != endpoint:
                raise ValueError(f"url must be this batch's endpoint {endpoint!r}, got {item.get('url')!r}")
            body = item.get("body")
            if not isinstance(body, dict):
                raise ValueError("body must be a JSON object")
            if body.get("stream"):
                raise ValueError("body.stream must be false in a batch")
        except ValueError as error:
            errors.append({"id": result_id(batch_id, number), "custom_id": custom_id, "response": None,
                           "error": {"code": "invalid_request", "message": f"line {number}: {error}"}})
            continue
        seen.add(custom_id)
        lines.append(BatchLine(number, custom_id, body))
    return lines, errors


def _read_results(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a partial result file; a torn last line (a kill mid-write) is cut."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


class CreateBatch(BaseModel):
    model_config = ConfigDict(extra="ignore")

    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


class BatchRunner:
    """Runs batches through ``send`` with at most ``concurrency`` requests of each in flight;
    ``resume`` picks up every unfinished batch of the store."""

    def __init__(self, store: BatchStore, send: Send, concurrency: int = 32, retry_limit_s: float = 600.0) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.store = store
        self.send = send
        self.concurrency = concurrency
        self.retry_limit_s = retry_limit_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._workers: dict[str, list[asyncio.Task[None]]] = {}
        self._cancelled: set[str] = set()

    def create(self, request: CreateBatch) -> dict[str, Any]:
        if request.endpoint not in ENDPOINTS:
            raise APIError(400, f"endpoint must be one of {', '.join(ENDPOINTS)}, got {request.endpoint!r}",
                           "endpoint", "invalid_value")
        if request.completion_window != "24h":
            raise APIError(400, f"completion_window must be '24h', got {request.completion_window!r}",
                           "completion_window", "invalid_value")
        info = self.store.file(request.input_file_id)
        if info["purpose"] != "batch":
            raise APIError(400, f"file {request.input_file_id} has purpose {info['purpose']!r}, not 'batch'",
                           "input_file_id", "invalid_value")
        now = int(time.time())
        batch: dict[str, Any] = {
            "id": _new_id("batch_"), "object": "batch", "endpoint": request.endpoint, "errors": None,
            "input_file_id": request.input_file_id, "completion_window": "24h", "status": "validating",
            "output_file_id": None, "error_file_id": None, "created_at": now, "in_progress_at": None,
            "expires_at": now + WINDOW_S, "finalizing_at": None, "completed_at": None, "failed_at": None,
            "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0}, "metadata": request.metadata,
        }
        self.store.save(batch)
        self._start(batch["id"])
        return batch

    def cancel(self, batch_id: str) -> dict[str, Any]:
        batch = self.store.batch(batch_id)
        if batch["status"] in TERMINAL or batch["status"] in ("cancelling", "finalizing"):
            return batch
        batch["status"], batch["cancelling_at"] = "cancelling", int(time.time())
        self.store.save(batch)
        self._cancelled.add(batch_id)
        for worker in self._workers.get(batch_id, []):
            worker.cancel()  # requests in flight are aborted in the engines
        self._start(batch_id)
        return batch

    def resume(self) -> list[str]:
        """Starts every batch of the store that has not finished; returns their ids."""
        ids = [b["id"] for b in self.store.list_batches() if b["status"] not in TERMINAL]
        for batch_id in ids:
            if self.store.batch(batch_id)["status"] == "cancelling":
                self._cancelled.add(batch_id)
            self._start(batch_id)
        return ids

    async def wait(self, batch_id: str) -> dict[str, Any]:
        task = self._tasks.get(batch_id)
        if task is not None:
            await asyncio.shield(task)
        return self.store.batch(batch_id)

    async def shutdown(self) -> None:
        """Stops the runs without changing their state: a restart resumes them."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, batch_id: str) -> None:
        if batch_id in self._tasks:
            return
        task = asyncio.ensure_future(self._run(batch_id))
        self._tasks[batch_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(batch_id, None))

    async def _run(self, batch_id: str) -> None:
        store = self.store
        batch = store.batch(batch_id)
        try:
            data = store.content(batch["input_file_id"])
        except APIError as error:
            batch.update(status="failed", failed_at=int(time.time()),
                         errors={"object": "list", "data": [{"code": "file_not_found", "message": error.message,
                                                             "param": "input_file_id", "line": None}]})
            store.save(batch)
            return
        lines, malformed = parse_input(data, batch["endpoint"], batch_id)
        out_path, err_path = store.partial(batch_id, "output"), store.partial(batch_id, "errors")
        done = {r["id"] for r in _read_results(out_path) + _read_results(err_path)}
        with open(err_path, "ab") as err_file:
            for record in malformed:
                if record["id"] not in done:
                    self._append(err_file, record)
        counts = batch["request_counts"]
        counts["total"] = len(lines) + len(malformed)
        counts["completed"] = len(_read_results(out_path))
        counts["failed"] = len(_read_results(err_path))
        if batch["status"] == "validating":
            batch.update(status="in_progress", in_progress_at=int(time.time()))
        store.save(batch)
        todo = [line for line in lines if result_id(batch_id, line.number) not in done]
        if batch_id not in self._cancelled:
            await self._send_lines(batch, todo, out_path, err_path)
        batch = {**store.batch(batch_id), "request_counts": batch["request_counts"]}
        cancelled = batch_id in self._cancelled
        self._cancelled.discard(batch_id)
        if not cancelled:
            batch.update(status="finalizing", finalizing_at=int(time.time()))
            store.save(batch)
        for kind, key in (("output", "output_file_id"), ("errors", "error_file_id")):
            path = store.partial(batch_id, kind)
            if path.exists() and path.stat().st_size:
                batch[key] = store.adopt_file(path, f"{batch_id}_{kind}.jsonl", f"batch_{kind}")["id"]
            elif path.exists():
                path.unlink()
        if cancelled:
            batch.update(status="cancelled", cancelled_at=int(time.time()))
        else:
            batch.update(status="completed", completed_at=int(time.time()))
        store.save(batch)
        log.info("batch %s %s: %s", batch_id, batch["status"], batch["request_counts"])

    async def _send_lines(self, batch: dict[str, Any], lines: list[BatchLine], out_path: Path,
                          err_path: Path) -> None:
        batch_id = batch["id"]
        counts = batch["request_counts"]
        queue: asyncio.Queue[BatchLine] = asyncio.Queue()
        for line in lines:
            queue.put_nowait(line)
        last_save = time.monotonic()

        with open(out_path, "ab") as out_file, open(err_path, "ab") as err_file:

            async def worker() -> None:
                nonlocal last_save
                while batch_id not in self._cancelled:
                    try:
                        line = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    record = await self._answer(batch, line)
                    if batch_id in self._cancelled:
                        return  # not written: a cancelled batch keeps only what finished before
                    ok = record["error"] is None and record["response"]["status_code"] == 200
                    self._append(out_file if ok else err_file, record)
                    counts["completed" if ok else "failed"] += 1
                    if time.monotonic() - last_save > 1.0:
                        last_save = time.monotonic()
                        self._save_counts(batch_id, counts)

            workers = [asyncio.ensure_future(worker()) for _ in range(min(self.concurrency, len(lines)))]
            self._workers[batch_id] = workers
            try:
                for result in await asyncio.gather(*workers, return_exceptions=True):
                    if isinstance(result, Exception):
                        raise result
            finally:
                self._workers.pop(batch_id, None)
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
        self._save_counts(batch_id, counts)

    def _save_counts(self, batch_id: str, counts: dict[str, int]) -> None:
        batch = self.store.batch(batch_id)
        batch["request_counts"] = dict(counts)
        self.store.save(batch)

    async def _answer(self, batch: dict[str, Any], line: BatchLine) -> dict[str, Any]:
        body = {**line.body, "service_tier": "flex", "stream": False}
        started = time.monotonic()
        while True:
            try:
                status, payload = await self.send(batch["endpoint"], body)
            except Exception as error:  # a failing server never takes the batch down
                status, payload = 500, {"error": {"message": f"request failed: {error}", "type": "server_error",
                                                  "param": None, "code": "request_failed"}}
            if status != 503 or time.monotonic() - started > self.retry_limit_s:
                break
            await asyncio.sleep(1.0)
        return {"id": result_id(batch["id"], line.number), "custom_id": line.custom_id,
                "response": {"status_code": status, "request_id": f"{batch['id']}-{line.number}", "body": payload},
                "error": None}

    @staticmethod
    def _append(file: Any, record: dict[str, Any]) -> None:
        file.write(json.dumps(record).encode() + b"\n")
        file.flush()
        os.fsync(file.fileno())


def asgi_sender(app: FastAPI) -> tuple[Send, Callable[[], Awaitable[None]]]:
    """``send`` through ``app`` itself, in process (its middleware, validation and routing), and
    a function that closes the client."""
    import httpx

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://batch", timeout=None)

    async def send(url: str, body: dict[str, Any]) -> tuple[int, Any]:
        response = await client.post(url, json=body)
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, {"error": {"message": response.text, "type": "server_error",
                                                    "param": None, "code": None}}

    return send, client.aclose


def mount_batch_api(app: FastAPI, root: str | Path, concurrency: int = 32) -> BatchRunner:
    """Adds the Files and Batches endpoints to ``app``, backed by ``root``; unfinished batches
    there resume once the app has started."""
    store = BatchStore(root)
    send, close = asgi_sender(app)
    runner = BatchRunner(store, send, concurrency)
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[Any]:
        async with inner(application) as state:
            resumed = runner.resume()
            if resumed:
                log.info("resuming batches %s", ", ".join(resumed))
            try:
                yield state
            finally:
                await runner.shutdown()
                await close()

    app.router.lifespan_context = lifespan

    @app.post("/v1/files")
    async def create_file(file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]) -> JSONResponse:
        if purpose != "batch":
            raise APIError(400, f"purpose must be 'batch' on this server, got {purpose!r}", "purpose",
                           "invalid_value")
        data = await file.read()
        return JSONResponse(store.add_file(data, file.filename or "upload.jsonl", purpose))

    @app.get("/v1/files")
    async def list_files() -> JSONResponse:
        return JSONResponse({"object": "list", "data": store.list_files(), "has_more": False})

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str) -> JSONResponse:
        return JSONResponse(store.file(file_id))

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str) -> Response:
        return Response(store.content(file_id), media_type="application/octet-stream")

    @app.post("/v1/batches")
    async def create_batch(body: CreateBatch) -> JSONResponse:
        return JSONResponse(runner.create(body))

    @app.get("/v1/batches")
    async def list_batches(limit: int = 20, after: str | None = None) -> JSONResponse:
        batches = store.list_batches()[::-1]
        if after is not None:
            ids = [b["id"] for b in batches]
            batches = batches[ids.index(after) + 1:] if after in ids else []
        page = batches[:limit]
        return JSONResponse({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                             "last_id": page[-1]["id"] if page else None, "has_more": len(batches) > limit})

    @app.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str) -> JSONResponse:
        return JSONResponse(store.batch(batch_id))

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str) -> JSONResponse:
        return JSONResponse(runner.cancel(batch_id))

    app.state.batches = runner
    return runner
