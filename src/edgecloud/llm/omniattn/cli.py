"""``edgecloud omniattn search`` (the layer search) and ``edgecloud bench omniattn`` (``bench.py``)."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    omni = commands.add_parser("omniattn", help="OmniAttn: layer-wise KV compression with a searched layer pattern")
    verbs = omni.add_subparsers(dest="verb", required=True)
    search = verbs.add_parser(
        "search", help="search which layers keep only a sink and a window under a KV budget",
        description="Find a KV layer pattern (OmniAttn) by inference-only evaluation on calibration texts and "
        "needle prompts from the Python standard library; write it as a file that serve/generate take with "
        "--kv-layer-pattern.",
    )
    search.add_argument("--model", default=None, help="model directory or GGUF file (default: SmolLM2-135M-Instruct)")
    search.add_argument("--budget", type=float, default=0.5,
                        help="KV to keep (layers x tokens) at --context, as a fraction of full KV")
    search.add_argument("--context", type=int, default=None, help="context the budget is stated at (default: the "
                        "model's context)")
    search.add_argument("--method", default="genetic", choices=["genetic", "greedy"])
    search.add_argument("--sink-blocks", type=int, default=8)
    search.add_argument("--window-blocks", type=int, default=24)
    search.add_argument("--block-size", type=int, default=16)
    search.add_argument("--calibration-context", type=int, default=3072, help="tokens of each calibration prompt")
    search.add_argument("--calibration-rows", type=int, default=128,
                        help="tokens of each calibration text scored as decoding predicts them")
    search.add_argument("--population", type=int, default=12, help="genetic: patterns per generation")
    search.add_argument("--generations", type=int, default=4, help="genetic: generations after the first")
    search.add_argument("--seed", type=int, default=0)
    search.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    search.add_argument("--cache-dir", type=Path, default=None,
                        help="keep the calibration prompts' prefill KV here and reuse it next time")
    search.add_argument("--out", type=Path, default=Path("kv_layer_pattern.json"), help="pattern file to write")
    search.set_defaults(handler=_search)

    parser = bench.add_parser(
        "omniattn", help="OmniAttn vs full KV, StreamingLLM and random patterns: perplexity, needle, decode speed",
        description="Quality (perplexity of held-out standard-library texts, needle in a haystack) and decode "
        "speed (step time, KV held per token) of a searched layer pattern against full KV, StreamingLLM at the "
        "same KV budget and random patterns with as many compressed layers, on the same inputs.",
    )
    parser.add_argument("--pattern", required=True, type=Path, help="the searched pattern (omniattn search --out)")
    parser.add_argument("--model", default=None, help="model directory or GGUF file (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--parts", default="quality,speed", help="comma-separated: quality, speed (default: both)")
    parser.add_argument("--contexts", type=int, nargs="*", default=[2048, 4096, 8192],
                        help="contexts for perplexity and decode speed (none: needles only)")
    parser.add_argument("--texts", nargs="+", default=None, metavar="FILE",
                        help="held-out perplexity texts, a subset of the default three (argparse.py difflib.py "
                        "pydoc_data/topics.py), e.g. to measure them in separate runs")
    parser.add_argument("--rows", type=int, default=256, help="tokens of each text scored as decoding predicts them")
    parser.add_argument("--needle-contexts", type=int, nargs="*", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--depths", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="needle depths")
    parser.add_argument("--random-seeds", type=int, nargs="*", default=[0, 1, 2], help="one random pattern each")
    parser.add_argument("--steps", type=int, default=32, help="decode steps timed per method and context")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--kv-cache-memory-mb", type=float, default=640.0,
                        help="KV memory of each engine in the speed part (holds the longest context)")
    parser.add_argument("--speed-kv", default="prefill", choices=["prefill", "random"],
                        help="speed part: KV from one full prefill, or random K/V under the prompt's keys (a decode "
                        "step's cost does not depend on the values; skips the long prefill)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="keep prefill KV and scored continuations here and reuse them next time "
                        "(a stopped run resumes)")
    parser.add_argument("--merge", type=Path, nargs="+", default=[],
                        help="earlier runs' JSON (--json) of the same pattern whose cases join this run's: run the "
                        "parts (perplexity, each needle context, speed) as separate runs, each resumable with "
                        "--cache-dir, and merge them; with --parts none, only merge")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument("--plot", type=Path, help="write a PNG here")
    parser.set_defaults(handler=_bench)


@contextlib.contextmanager
def _bench_errors() -> Iterator[None]:
    """A context too short for a needle or beyond a text is an option to fix: one line."""
    try:
        yield
    except ValueError as exc:
        raise SystemExit(f"edgecloud bench omniattn: {exc}") from None


def _bench(args: argparse.Namespace) -> int:
    from edgecloud.bench.machine import LoadWatch
    from edgecloud.llm.cli import _model_errors
    from edgecloud.llm.omniattn.bench import merge_cases, run_quality, run_speed, write_json, write_plot
    from edgecloud.llm.omniattn.pattern import LayerPattern
    from edgecloud.llm.omniattn.quality import EVAL_FILES

    parts = set(args.parts.split(",")) - {"none"}
    if (not parts and not args.merge) or parts - {"quality", "speed"}:
        raise SystemExit(f"--parts must name quality and/or speed (none: only --merge), got {args.parts!r}")
    if args.rows < 2 or any(c <= args.rows for c in args.contexts):
        raise SystemExit(f"--rows must be >= 2 and below every context, got {args.rows}")
    if "speed" in parts and not args.contexts:
        raise SystemExit("--contexts must name at least one context for the speed part")
    if args.threads < 1 or args.steps < 1:
        raise SystemExit("--threads and --steps must be >= 1")
    with _model_errors(), _bench_errors():
        pattern = LayerPattern.load(args.pattern)
        earlier = [_earlier_run(path, pattern) for path in args.merge]
        watch = LoadWatch.begin(timed="speed" in parts)  # the quality part is not timed
        quality, speed, inputs = [], [], {}
        if "quality" in parts:
            import torch

            torch.set_num_threads(args.threads)
            quality, inputs = run_quality(args.model, pattern, args.contexts, args.rows, args.needle_contexts,
                                          args.depths, args.random_seeds, args.cache_dir,
                                          texts=tuple(args.texts or EVAL_FILES))
        if "speed" in parts:
            speed = run_speed(args.model, pattern, args.contexts, args.steps, args.threads, args.kv_cache_memory_mb,
                              args.speed_kv)
    result = {
        "title": f"OmniAttn {pattern.describe()} ({len(pattern.compressed)}/{pattern.num_layers} layers "
                 f"sink {pattern.sink_blocks} + window {pattern.window_blocks} blocks of {pattern.block_size})",
        "pattern": {"file": str(args.pattern), "layers": pattern.describe(), "sink_blocks": pattern.sink_blocks,
                    "window_blocks": pattern.window_blocks, "block_size": pattern.block_size,
                    "search": pattern.info.get("search", {}).get("cost")},
        "parts": sorted(parts), "threads": args.threads, "speed_kv": args.speed_kv, "inputs": inputs,
        "cases": merge_cases(quality, speed),
        "machine_load": watch.finish().as_dict(),
    }
    if earlier:
        result = _merged(result, earlier, args.merge)
    for case in result["cases"]:
        print(f"{case['method']:>9} seed={case['seed']} ctx={case['context']:>5} kv={case['kv_fraction']:.3f} "
              f"ppl={case['ppl']} (x{case.get('ppl_ratio')} {case.get('ppl_ratio_ci95')}) needle={case['needle_acc']} "
              f"step_ms={case['step_ms']}")
    if args.json:
        write_json(result, args.json)
    if args.plot:
        write_plot(result, args.plot)
    return 0


def _earlier_run(path: Path, pattern: Any) -> dict[str, Any]:
    """An earlier ``--json`` of the same pattern (another pattern's cases would not compare)."""
    try:
        run = json.loads(path.read_text())
        layers = run["pattern"]["layers"]
        shape = [run["pattern"][k] for k in ("sink_blocks", "window_blocks", "block_size")]
        if not isinstance(run["cases"], list) or not isinstance(run["parts"], list):
            raise TypeError("cases and parts must be lists")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"edgecloud bench omniattn: --merge {path}: not a bench omniattn JSON ({exc})") from None
    if layers != pattern.describe() or shape != [pattern.sink_blocks, pattern.window_blocks, pattern.block_size]:
        raise SystemExit(f"edgecloud bench omniattn: --merge {path}: pattern {layers} {shape} is not "
                         f"{pattern.describe()} [{pattern.sink_blocks}, {pattern.window_blocks}, {pattern.block_size}]")
    run["file"] = str(path)
    return run


def _merged(result: dict[str, Any], earlier: list[dict[str, Any]], paths: list[Path]) -> dict[str, Any]:
    """This run's result with the earlier runs' cases; each run's parts, inputs, threads and
    machine load are kept under ``runs`` (the top-level inputs join theirs)."""
    from edgecloud.llm.omniattn.bench import merge_cases

    runs = [*earlier, {**result, "file": None}] if result["parts"] else list(earlier)
    inputs: dict[str, Any] = {}
    seen: dict[str, list[Any]] = {}
    for run in runs:
        for key, value in run["inputs"].items():
            if key == "tokens_through_model":
                inputs[key] = inputs.get(key, 0) + value
            elif value and value not in seen.setdefault(key, []):
                seen[key].append(value)
    inputs.update({key: values[0] if len(values) == 1 else values for key, values in seen.items()})
    speed_runs = [run for run in runs if "speed" in run["parts"]]
    return {
        **result,
        "parts": sorted({part for run in runs for part in run["parts"]}),
        "threads": sorted({run["threads"] for run in runs}),
        "speed_kv": speed_runs[-1]["speed_kv"] if speed_runs else None,
        "inputs": inputs,
        "cases": merge_cases(*(run["cases"] for run in earlier), result["cases"]),
        "runs": [{key: run.get(key) for key in ("file", "parts", "threads", "speed_kv", "inputs", "machine_load")}
                 for run in runs],
    }


def _search(args: argparse.Namespace) -> int:
    from edgecloud.llm.cli import _model_errors
    from edgecloud.llm.omniattn.search import search_pattern

    with _model_errors():
        pattern = search_pattern(
            args.model, args.budget, args.method, args.context, args.calibration_context, args.calibration_rows,
            args.sink_blocks, args.window_blocks, args.block_size, args.population, args.generations, args.seed,
            args.threads, args.cache_dir, progress=print,
        )
    pattern.save(args.out)
    cost = pattern.info["search"]["cost"]
    print(f"wrote {args.out}: {pattern.describe()} ({len(pattern.compressed)} of {pattern.num_layers} layers "
          f"compressed; KV fraction {pattern.info['kv_fraction']})")
    print(f"cost: {cost['patterns_evaluated']} patterns, {cost['search_tokens']} tokens searched after "
          f"{cost['prefill_tokens']} prefilled; {cost['prepare_seconds']} s preparing, {cost['search_seconds']} s "
          f"searching on {cost['threads']} threads")
    return 0
