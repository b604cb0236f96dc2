"""``edgecloud batch run INPUT.jsonl OUTPUT.jsonl``: an OpenAI batch file run offline, as
``vllm run-batch`` does, on one engine or on a cluster (``--config``), with a progress bar.

It is the Batch API of ``edgecloud.cluster.batches`` without a port: the server's app runs in
process, the batch goes through it as ``flex`` work, and OUTPUT gets every line's result (answers
and errors). With ``--batch-dir`` a run killed part-way and started again resumes, answering each
line once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from edgecloud.errors import USAGE, CLIError, output_file


def register(commands: Any, bench: Any) -> None:
    from edgecloud.llm.cli import add_engine_options

    batch = commands.add_parser("batch", help="run an OpenAI batch file (JSONL) offline, as `vllm run-batch`",
                                description="OpenAI batch files run without a server.")
    verbs = batch.add_subparsers(dest="batch_command", metavar="<verb>")
    verbs.required = True
    run = verbs.add_parser(
        "run", help="answer every line of INPUT.jsonl into OUTPUT.jsonl",
        description="Run an OpenAI batch file (lines {custom_id, method, url, body}, one endpoint: "
        "/v1/completions or /v1/chat/completions) on one engine, or on a cluster with --config, as flex work; "
        "OUTPUT gets one result line per input line (malformed lines get an error naming the line).",
    )
    run.add_argument("input", help="the batch file (JSONL)")
    run.add_argument("output", type=output_file, help="where the results go (JSONL)")
    run.add_argument("--config", default=None, help="TOML cluster file (edgecloud cluster serve --config)")
    run.add_argument("--concurrency", type=int, default=32, help="requests in flight at once")
    run.add_argument("--served-model-name", default=None,
                     help="the model name the lines' bodies use (default: the engine's name)")
    run.add_argument("--batch-dir", default=None,
                     help="keep the batch's state here (default: a temporary directory); run again with the same "
                     "directory to resume a run that was killed")
    add_engine_options(run)
    run.set_defaults(handler=_run)


def batch_endpoint(data: bytes) -> str:
    """The endpoint of a batch file: the ``url`` of its first line that has one."""
    for raw in data.splitlines():
        try:
            item = json.loads(raw)
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            return item["url"]
    raise ValueError("input: no line has a url (/v1/completions or /v1/chat/completions)")


async def run_batch_file(engine: Any, input_path: Path, output_path: Path, batch_dir: Path,
                         concurrency: int, served_model_name: str | None = None) -> dict[str, int]:
    """Runs the batch at ``input_path`` through a server app over ``engine``; writes every result
    to ``output_path``; returns the request counts. A batch of the same input left unfinished in
    ``batch_dir`` is resumed instead of started again."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgecloud.cluster.batches import TERMINAL, CreateBatch, mount_batch_api
    from edgecloud.server.app import ServerSettings, build_app

    data = input_path.read_bytes()
    endpoint = batch_endpoint(data)
    app = build_app(engine, ServerSettings(served_model_name=served_model_name,
                                           max_waiting=max(256, 2 * concurrency)))
    runner = mount_batch_api(app, batch_dir, concurrency)
    key = str(input_path.resolve())
    async with app.router.lifespan_context(app):
        store = runner.store
        unfinished = [b for b in store.list_batches()
                      if b["status"] not in TERMINAL and (b.get("metadata") or {}).get("input") == key]
        if unfinished:
            batch = unfinished[-1]
        else:
            file_id = store.add_file(data, input_path.name, "batch")["id"]
            batch = runner.create(CreateBatch(input_file_id=file_id, endpoint=endpoint, metadata={"input": key}))
        columns = (TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
                   TimeElapsedColumn())
        with Progress(*columns) as progress:
            task = progress.add_task("batch", total=None, failed=0)
            while True:
                batch = store.batch(batch["id"])
                counts = batch["request_counts"]
                progress.update(task, total=counts["total"] or None, completed=counts["completed"] + counts["failed"],
                                failed=counts["failed"])
                if batch["status"] in TERMINAL:
                    break
                await asyncio.sleep(0.25)
    with open(output_path, "wb") as out:
        for key_name in ("output_file_id", "error_file_id"):
            if batch.get(key_name):
                out.write(store.content(batch[key_name]))
    return batch["request_counts"]


def _run(args: argparse.Namespace) -> int:
    from edgecloud.cluster.config import ClusterConfigError, instances_from_toml
    from edgecloud.cluster.main import ClusterSettings, build_cluster
    from edgecloud.llm import InvalidRequestError
    from edgecloud.llm.async_engine import AsyncEngine
    from edgecloud.llm.cli import engine_config_from_args

    input_path = Path(args.input)
    if not input_path.is_file():
        raise CLIError(f"input: no such file {args.input!r}", USAGE)
    if args.concurrency < 1:
        raise CLIError(f"--concurrency must be >= 1, got {args.concurrency}", USAGE)
    try:
        base = engine_config_from_args(args)
        if args.config:
            specs, router = instances_from_toml(args.config, base)
            engine: Any = build_cluster(specs, ClusterSettings(policy=router.policy or "least-outstanding",
                                                               policy_options=router.policy_options,
                                                               connector=router.connector))
        else:
            engine = AsyncEngine(base, core="process")
        batch_endpoint(input_path.read_bytes())
    except (InvalidRequestError, ClusterConfigError, ValueError) as error:
        raise CLIError(str(error), USAGE) from None
    with tempfile.TemporaryDirectory(prefix="edgecloud-batch-") as tmp:
        state = Path(args.batch_dir) if args.batch_dir else Path(tmp)
        counts = asyncio.run(run_batch_file(engine, input_path, Path(args.output), state, args.concurrency,
                                            args.served_model_name))
    print(f"edgecloud batch run: {counts['completed']} answered, {counts['failed']} failed of {counts['total']}; "
          f"results in {args.output}")
    return 0
