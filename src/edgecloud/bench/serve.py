"""The serving benchmark as a whole: build the workload and its arrivals from options, run it
with a progress bar, and report (table, JSON, plot)."""

from __future__ import annotations

import argparse
import asyncio
import math
import os
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from edgecloud.bench.arrivals import gamma_arrivals, trace_arrivals
from edgecloud.bench.client import Endpoint
from edgecloud.bench.machine import LoadWatch
from edgecloud.bench.metrics import RequestRecord, Slo, summarize
from edgecloud.bench.report import error_reasons, plot, report_console, summary_table, write_json
from edgecloud.bench.runner import first_model, run_requests
from edgecloud.bench.traces import read_trace
from edgecloud.bench.workload import (
    BenchRequest,
    LengthScaling,
    PrefixTree,
    PromptVocab,
    random_workload,
    shared_prefix_workload,
    trace_workload,
)
from edgecloud.errors import USAGE, CLIError


def tokenizer_dir(spec: str | None) -> Path:
    """The directory holding the served model's ``tokenizer.json``, from what ``--model`` takes: an HF
    model directory, a ``.gguf`` file (converted once and cached, as the server does), ``demo``, or
    nothing for the model ``edgecloud serve`` runs by default (SmolLM2-135M-Instruct)."""
    if spec is not None:
        path = Path(spec).expanduser()
        if path.is_dir() or (path.is_file() and path.suffix != ".gguf"):  # a directory or a tokenizer.json
            return path
    from edgecloud.llm.errors import ModelLoadError
    from edgecloud.llm.model_source import resolve_model

    try:
        return resolve_model(spec).directory
    except ModelLoadError as error:
        raise FileNotFoundError(f"--tokenizer: {error}") from error


def build_workload(args: argparse.Namespace, vocab: PromptVocab) -> list[BenchRequest]:
    kind = args.workload or ("trace" if args.trace else "random")
    if kind == "trace":
        if not args.trace:
            raise ValueError("--workload trace needs --trace PATH")
        records = read_trace(args.trace, limit=args.num_requests)
        scaling = LengthScaling(args.input_scale, args.output_scale, args.max_input_len, args.max_output_len)
        return trace_workload(vocab, records, scaling, args.hash_block_tokens, seed=args.seed)
    if kind == "shared-prefix":
        tree = PrefixTree(
            num_systems=args.prefix_systems,
            system_len=args.prefix_system_len,
            templates_per_system=args.prefix_templates,
            template_len=args.prefix_template_len,
            requests_per_template=args.prefix_requests,
            suffix_len=args.prefix_suffix_len,
            output_len=args.output_len,
        )
        requests = shared_prefix_workload(vocab, tree, seed=args.seed)
        return requests[: args.num_requests] if args.num_requests else requests
    return random_workload(
        vocab, args.num_requests or 200, args.input_len, args.output_len, args.range_ratio, seed=args.seed
    )


def build_arrivals(args: argparse.Namespace, requests: list[BenchRequest]) -> list[float]:
    from_trace = [r.trace_arrival_s for r in requests]
    if args.request_rate is None and all(t is not None for t in from_trace) and requests:
        return trace_arrivals([float(t) for t in from_trace if t is not None], args.time_scale)
    rate = args.request_rate if args.request_rate is not None else math.inf
    return gamma_arrivals(len(requests), rate, args.burstiness, seed=args.seed)


def run_with_progress(
    endpoint: Endpoint,
    requests: list[BenchRequest],
    arrivals: list[float],
    max_concurrency: int | None,
    timeout_s: float,
    console: Console,
    quiet: bool = False,
) -> list[RequestRecord]:
    columns = (
        TextColumn("[bold]serving"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("errors: {task.fields[errors]}"),
    )
    with Progress(*columns, console=console, disable=quiet) as progress:
        task = progress.add_task("requests", total=len(requests), errors=0)
        errors = 0

        def on_done(record: RequestRecord) -> None:
            nonlocal errors
            errors += 0 if record.ok else 1
            progress.update(task, advance=1, errors=errors)

        return asyncio.run(run_requests(endpoint, requests, arrivals, max_concurrency, timeout_s, on_done))


def run_from_args(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        vocab = PromptVocab.from_dir(tokenizer_dir(args.tokenizer))
        requests = build_workload(args, vocab)
        arrivals = build_arrivals(args, requests)
        api_key = args.api_key or os.environ.get("OPENAI_API_KEY")
        model = args.model or asyncio.run(first_model(args.base_url, api_key))
    except (aiohttp.ClientError, TimeoutError) as error:  # before OSError: both subclass it
        raise CLIError(
            f"cannot list models at {args.base_url}/v1/models: {error or type(error).__name__}; is the server "
            "running there (edgecloud serve)? Or pass --model to skip the listing"
        ) from error
    except (OSError, ValueError, RuntimeError) as error:
        raise CLIError(str(error), USAGE) from error
    endpoint = Endpoint(args.base_url, model, args.api, args.ignore_eos, args.temperature, api_key)
    # The server under test may run on this machine: its CPU time cannot be told from other
    # processes', so the load at the start decides whether the machine was busy.
    watch = LoadWatch.begin(self_contained=False)
    records = run_with_progress(
        endpoint, requests, arrivals, args.max_concurrency, args.timeout, console, args.quiet
    )
    machine = watch.finish()
    slo = Slo(
        ttft=args.slo_ttft_ms / 1000 if args.slo_ttft_ms else None,
        tpot=args.slo_tpot_ms / 1000 if args.slo_tpot_ms else None,
    )
    summary = summarize(records, slo)
    title = f"edgecloud bench serve → {args.base_url} ({model})"
    out = report_console()
    out.print(summary_table(summary, title))
    reasons = error_reasons(records)
    if reasons:
        out.print("errors, by reason:", highlight=False)
        for line in reasons:
            out.print(f"  {line}", highlight=False, markup=False)
    config = _config(args, model, requests)
    if args.json_path:
        write_json(args.json_path, summary, records, config, machine.as_dict())
    if args.plot_path:
        plot(args.plot_path, records, summary, title=f"{config['workload']} → {model}")
    return 0 if summary.completed else 1


def _config(args: argparse.Namespace, model: str, requests: list[BenchRequest]) -> dict[str, Any]:
    config = {k: v for k, v in vars(args).items() if k != "handler" and not callable(v)}
    config["model"] = model
    config["workload"] = args.workload or ("trace" if args.trace else "random")
    config["num_requests"] = len(requests)
    config["mean_prompt_ids"] = sum(len(r.prompt_ids) for r in requests) / max(1, len(requests))
    config["mean_output_len"] = sum(r.output_len for r in requests) / max(1, len(requests))
    return config

