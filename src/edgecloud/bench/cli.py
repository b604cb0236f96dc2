"""``edgecloud bench serve``: the serving load generator (like ``vllm bench serve``)."""

from __future__ import annotations

import argparse
from typing import Any

from edgecloud.errors import output_file


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def register(commands: Any, bench: Any) -> None:
    parser = bench.add_parser(
        "serve",
        help="load-test an OpenAI-compatible server: random, shared-prefix or trace-replay workloads",
        description="Send a workload to an OpenAI-compatible endpoint (ours or any other) with "
        "streaming, and report TTFT, TPOT, ITL, e2e latency, throughput, goodput and errors.",
    )
    target = parser.add_argument_group("target")
    target.add_argument("--base-url", default="http://127.0.0.1:8000", help="server URL, without /v1")
    target.add_argument("--model", help="model name to request (default: the first of GET /v1/models)")
    target.add_argument("--api", choices=["completions", "chat"], default="completions")
    target.add_argument("--api-key", help="bearer token (default: $OPENAI_API_KEY if set)")
    target.add_argument(
        "--tokenizer",
        help="the served model, as `edgecloud serve --model` takes it (an HF directory, a .gguf file or "
        "'demo'), or a tokenizer.json: its tokenizer builds prompts of exact token lengths "
        "(default: the tokenizer of the model `edgecloud serve` runs by default, SmolLM2-135M-Instruct)",
    )
    target.add_argument("--temperature", type=float, default=0.0)
    target.add_argument(
        "--no-ignore-eos", dest="ignore_eos", action="store_false",
        help="let the model stop at EOS instead of forcing each request's output length",
    )
    target.add_argument("--timeout", type=_positive_float, default=600.0,
                        help="a request fails as 'timeout' when its stream stays silent this long (s)")

    load = parser.add_argument_group("workload")
    load.add_argument(
        "--workload", choices=["random", "shared-prefix", "trace"],
        help="default: trace when --trace is given, else random",
    )
    load.add_argument("--trace", help="Azure LLM 2023 .csv or Mooncake .jsonl trace to replay")
    load.add_argument("--num-requests", type=_positive_int, help="requests to send (trace: the first N)")
    load.add_argument("--input-len", type=_positive_int, default=256, help="random: mean prompt tokens")
    load.add_argument(
        "--output-len", type=_positive_int, default=64, help="random/shared-prefix: output tokens"
    )
    load.add_argument("--range-ratio", type=float, default=0.0, help="random: lengths uniform in ±ratio")
    load.add_argument("--prefix-systems", type=_positive_int, default=2, help="shared-prefix: system prompts")
    load.add_argument("--prefix-system-len", type=int, default=256)
    load.add_argument("--prefix-templates", type=_positive_int, default=4, help="templates per system prompt")
    load.add_argument("--prefix-template-len", type=int, default=64)
    load.add_argument("--prefix-requests", type=_positive_int, default=8, help="requests per template")
    load.add_argument("--prefix-suffix-len", type=_positive_int, default=32)
    load.add_argument("--input-scale", type=_positive_float, default=1.0, help="trace: scale prompt lengths")
    load.add_argument("--output-scale", type=_positive_float, default=1.0, help="trace: scale output lengths")
    load.add_argument("--max-input-len", type=_positive_int, help="trace: cap on scaled prompt length")
    load.add_argument("--max-output-len", type=_positive_int, help="trace: cap on scaled output length")
    load.add_argument(
        "--hash-block-tokens", type=_positive_int,
        help="Mooncake: tokens per hash id (default: 512 × --input-scale)",
    )
    load.add_argument("--seed", type=int, default=0)

    pacing = parser.add_argument_group("arrivals")
    pacing.add_argument(
        "--request-rate", type=_positive_float,
        help="requests/s (Poisson, or gamma with --burstiness); default: the trace's own "
        "timestamps for a trace, else all at once (inf)",
    )
    pacing.add_argument("--burstiness", type=_positive_float, default=1.0, help="gamma shape; 1 = Poisson")
    pacing.add_argument(
        "--time-scale", type=_positive_float, default=1.0,
        help="trace timestamps are multiplied by this (0.1 = ten times faster)",
    )
    pacing.add_argument("--max-concurrency", type=_positive_int, help="cap on requests in flight")

    out = parser.add_argument_group("results")
    out.add_argument("--slo-ttft-ms", type=_positive_float, help="TTFT objective for goodput")
    out.add_argument("--slo-tpot-ms", type=_positive_float, help="TPOT objective for goodput")
    out.add_argument(
        "--json", dest="json_path", type=output_file, help="write the summary and per-request results here"
    )
    out.add_argument(
        "--plot", dest="plot_path", type=output_file, help="write latency CDFs and throughput over time (PNG)"
    )
    out.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_serve_handler)


def _serve_handler(args: argparse.Namespace) -> int:
    from edgecloud.bench.serve import run_from_args

    return run_from_args(args)
