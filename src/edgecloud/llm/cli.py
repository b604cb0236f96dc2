"""CLI of the engine: ``edgecloud generate``, ``edgecloud random-model``, ``edgecloud bench engine``."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgecloud.llm.config import EngineConfig


DEMO_PROMPTS = ["A fool and his money", "Never put off until tomorrow", "The best way to"]


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """Engine options shared by every command that runs the engine (generate, serve, benchmarks)."""
    group = parser.add_argument_group("engine")
    group.add_argument("--model", default=None,
                       help="HF model directory, a .gguf file, or 'demo' (the embedded 5.8M fortune model); "
                       "default: SmolLM2-135M-Instruct")
    group.add_argument("--chat-template", default=None,
                       help="chat template to use instead of the model's: a file, the template text, or the "
                       "name of one of the model's templates")
    group.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                       help="weights/activations dtype; auto = float32 on CPU, bfloat16 on CUDA")
    group.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    group.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block")
    group.add_argument("--kv-cache-memory-mb", type=float, default=512, help="KV-cache pool size in MiB")
    group.add_argument("--max-num-seqs", type=int, default=64, help="most sequences in one step")
    group.add_argument("--max-num-batched-tokens", type=int, default=2048, help="token budget of one step")
    group.add_argument("--flex-max-batched-tokens", type=int, default=None,
                       help="tokens of flex (offline) work in one step (default: --max-num-seqs), so a step "
                       "with flex work costs about one decode step and online requests never wait behind a "
                       "long flex prefill; raise it for an engine that serves offline work only")
    group.add_argument("--max-model-len", type=int, default=None, help="context length (default: the model's)")
    group.add_argument("--no-prefix-caching", action="store_true", help="disable automatic prefix caching")
    group.add_argument("--attention-backend", default="paged", help="decode attention: paged or prefix")
    group.add_argument("--quantization", default="none", choices=["none", "int8", "int4"],
                       help="weight-only quantization of the projections and LM head (int4 = GGUF Q4_1 blocks, "
                       "int8 = Q8_0; read straight from the GGUF file when the model is one)")
    group.add_argument("--kv-layer-pattern", default=None, metavar="FILE",
                       help="OmniAttn layer pattern (from `edgecloud omniattn search`): its sink_window layers keep "
                       "only a sink and a recent window of KV while decoding")
    group.add_argument("--seed", type=int, default=0,
                       help="the engine's seed, for sampling of requests that bring no seed of their own")
    group.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")


def engine_config_from_args(args: argparse.Namespace) -> EngineConfig:
    from edgecloud.llm.config import EngineConfig

    return EngineConfig(
        model=args.model, dtype=args.dtype, device=args.device, block_size=args.block_size,
        kv_cache_memory_mb=args.kv_cache_memory_mb, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens, max_model_len=args.max_model_len,
        flex_max_batched_tokens=args.flex_max_batched_tokens,
        enable_prefix_caching=not args.no_prefix_caching, attention_backend=args.attention_backend,
        seed=args.seed, num_threads=args.threads, chat_template=args.chat_template, quantization=args.quantization,
        kv_layer_pattern=args.kv_layer_pattern,
    )


def _length_range(text: str) -> tuple[int, int]:
    try:
        lo, _, hi = text.partition(":")
        low, high = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A:B (two integers), got {text!r}") from None
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"expected 1 <= A <= B, got {text!r}")
    return low, high


def register(commands: argparse._SubParsersAction, bench: argparse._SubParsersAction) -> None:
    gen = commands.add_parser(
        "generate", help="generate text with the engine (streams to stdout)",
        description="Generate continuations of one or more prompts with the edgecloud engine.",
    )
    gen.add_argument("prompts", nargs="*", help="prompt texts (default: a few demo prompts)")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-p", type=float, default=0.95)
    gen.add_argument("--n", type=int, default=1, help="completions per prompt")
    gen.add_argument("--sample-seed", type=int, default=None,
                     help="seed of each request's own sampling: the same seed gives the same text whatever else "
                     "is batched (--seed is the engine's seed, used by requests without one)")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt in the model's chat template")
    gen.add_argument("--json", action="store_true", help="print one JSON object per completion instead of text")
    add_engine_options(gen)
    gen.set_defaults(handler=_generate)

    rnd = commands.add_parser(
        "random-model", help="write a random-weight HF model directory (tests, benchmarks)",
        description="Write a random-weight Llama/Qwen2/Mistral checkpoint with a small BPE tokenizer. "
        "Preset 30m is the ~30M-parameter model the engine benchmark is specified on.",
    )
    rnd.add_argument("out", type=Path, help="directory to write")
    rnd.add_argument("--arch", default="llama", choices=["llama", "qwen2", "mistral"])
    rnd.add_argument("--preset", default="30m", choices=["tiny", "30m", "6m-4k"])
    rnd.add_argument("--seed", type=int, default=0)
    rnd.set_defaults(handler=_random_model)

    eng = bench.add_parser(
        "engine", help="engine vs transformers generate, with this machine's roofline",
        description="Run the engine and transformers' generate (padded static batches of the same "
        "requests, same batch size) on the same model in one process, and the roofline bound.",
    )
    eng.add_argument("--model", required=True,
                     help="HF model directory (e.g. from `edgecloud random-model`); a .gguf file with --peer")
    eng.add_argument("--peer", default=None, choices=["llama.cpp"],
                     help="run this peer instead of transformers, on the same GGUF file (pip install -e '.[peer]')")
    eng.add_argument("--streams", default="1,8,32", help="with --peer: concurrent streams, comma-separated")
    eng.add_argument("--engine-quantization", default="int4,none",
                     help="with --peer: engine weight formats to run, comma-separated: int4 (the file's Q4_1 "
                     "blocks), int8 (Q8_0), none (dense, in --dtype)")
    eng.add_argument("--num-prompts", type=int, default=64)
    eng.add_argument("--input-len", type=_length_range, default=None,
                     help="prompt lengths A:B (uniform; default 32:256, with --peer 128)")
    eng.add_argument("--output-len", type=_length_range, default=None,
                     help="output lengths C:D (uniform; default 32:128, with --peer 128)")
    eng.add_argument("--batch-size", type=int, default=64, help="engine max_num_seqs and HF batch size")
    eng.add_argument("--threads", type=int, default=2, help="torch threads for both")
    eng.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    eng.add_argument("--attention-backend", default="paged")
    eng.add_argument("--seed", type=int, default=0)
    eng.add_argument("--perplexity-text", type=Path, default=None,
                     help="with --peer: also report each engine weight format's perplexity on this text")
    eng.add_argument("--json", type=Path, default=None, help="write the result here")
    eng.set_defaults(handler=_bench_engine)

    tiers = bench.add_parser(
        "tiers", help="online TTFT beside a batch full of offline (flex) decodes: idle vs tiers vs FCFS",
        description="Measure online requests' TTFT on an idle engine, and while flex requests fill every "
        "seat: with service tiers (online preempts flex at the next step) and without (FCFS). The goal: "
        "TTFT p99 with tiers <= idle p99 (the same online requests at the same times, no flex work) + one decode "
        "step of the flex batch; preempted flex requests "
        "finish with their uninterrupted greedy output.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    tiers.add_argument("--model", default=None, help="model directory or GGUF file (default: the default model)")
    tiers.add_argument("--flex-batch", type=int, default=16, help="max_num_seqs, all filled by flex requests")
    tiers.add_argument("--flex-output", type=int, default=96, help="tokens each flex request generates")
    tiers.add_argument("--online-requests", type=int, default=40)
    tiers.add_argument("--online-prompt-len", type=int, default=128)
    tiers.add_argument("--online-output", type=int, default=4)
    tiers.add_argument("--rate", type=float, default=0.5,
                       help="online arrivals per second (Poisson); low, so online requests rarely queue "
                       "behind each other")
    tiers.add_argument("--flex-max-batched-tokens", type=int, default=None,
                       help="the engine's cap on flex tokens per step (default: --flex-batch)")
    tiers.add_argument("--flex-prompt-len", type=_length_range, default=(16, 64),
                       help="flex prompt lengths A:B; from 65 tokens up the flex batch is mostly prefilling and "
                       "the bench also reports how long an online request arriving during flex prefill waits "
                       "for its own prefill, against one layer's time + one step (OOCO, issue #19)")
    tiers.add_argument("--threads", type=int, default=2)
    tiers.add_argument("--seed", type=int, default=0)
    tiers.add_argument("--json", type=Path, default=None, help="write the result here")
    tiers.add_argument("--plot", type=Path, default=None, help="write a CDF plot (PNG) here")
    tiers.set_defaults(handler=_bench_tiers)


def _generate(args: argparse.Namespace) -> int:
    from edgecloud.errors import USAGE, CLIError
    from edgecloud.llm.engine import LLMEngine
    from edgecloud.llm.errors import InvalidRequestError, ModelLoadError
    from edgecloud.llm.outputs import OutputKind
    from edgecloud.llm.sampling_params import SamplingParams

    prompts = args.prompts or DEMO_PROMPTS
    try:
        engine = LLMEngine(engine_config_from_args(args))
        params = SamplingParams(n=args.n, max_tokens=args.max_tokens, temperature=args.temperature,
                                top_p=args.top_p, seed=args.sample_seed)
        for i, prompt in enumerate(prompts):
            if args.chat:  # the template places the special tokens itself
                text = engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
                ids = engine.tokenizer.encode(text, add_special_tokens=False)
                engine.add_request(str(i), ids, params, output_kind=OutputKind.DELTA)
            else:
                engine.add_request(str(i), prompt, params, output_kind=OutputKind.DELTA)
    except (InvalidRequestError, ModelLoadError) as exc:
        raise CLIError(str(exc), USAGE) from exc
    streaming = len(prompts) == 1 and args.n == 1 and not args.json
    texts: dict[tuple[int, int], list[str]] = {}
    reasons: dict[tuple[int, int], str | None] = {}
    while engine.has_unfinished():
        for out in engine.step():
            for completion in out.outputs:
                key = (int(out.request_id), completion.index)
                texts.setdefault(key, []).append(completion.text)
                reasons[key] = completion.finish_reason
                if streaming:  # one stream: print as it grows
                    print(completion.text, end="", flush=True)
    if streaming:
        print()
        return 0
    for (i, index), parts in sorted(texts.items()):
        text = "".join(parts)
        if args.json:
            reason = reasons[(i, index)]
            print(json.dumps({"prompt": prompts[i], "index": index, "text": text, "finish_reason": reason}))
        else:
            sample = f", sample {index}" if args.n > 1 else ""
            print(f"--- prompt {i}{sample}: {prompts[i]!r} ({reasons[(i, index)]})\n{text}\n")
    return 0


def _random_model(args: argparse.Namespace) -> int:
    from edgecloud.llm.random_model import PRESETS, write_random_model

    path = write_random_model(args.out, arch=args.arch, seed=args.seed, **PRESETS[args.preset])
    print(f"wrote {args.arch} ({args.preset}) to {path}")
    return 0


@contextlib.contextmanager
def _model_errors() -> Iterator[None]:
    """A model that cannot load or an option out of range is the user's to fix: one line, exit 2."""
    from edgecloud.errors import USAGE, CLIError
    from edgecloud.llm.errors import InvalidRequestError, ModelLoadError

    try:
        yield
    except (InvalidRequestError, ModelLoadError) as exc:
        raise CLIError(str(exc), USAGE) from exc


def _bench_tiers(args: argparse.Namespace) -> int:
    from edgecloud.llm.bench_tiers import bench_tiers, plot_tiers

    with _model_errors():
        r = bench_tiers(args.model, args.flex_batch, args.flex_output, args.online_requests, args.online_prompt_len,
                        args.online_output, args.rate, args.threads, args.seed, args.json,
                        flex_max_batched_tokens=args.flex_max_batched_tokens, flex_prompt_len=args.flex_prompt_len)
    if args.plot is not None:
        plot_tiers(r, args.plot)
    print(f"model {r.model}, {r.threads} threads, {r.cpu}")
    print(f"online TTFT p99: idle {r.idle_arrivals_ttft_ms_p99:.1f} ms (same arrivals; each alone "
          f"{r.idle_ttft_ms_p99:.1f} ms); flex decode step {r.decode_step_ms:.1f} ms; "
          f"bound {r.bound_ms:.1f} ms")
    print(f"  with tiers {r.tiers_ttft_ms_p99:.1f} ms ({'met' if r.met else 'MISSED'}); "
          f"FCFS {r.fcfs_ttft_ms_p99:.1f} ms")
    print(f"flex work per step: at most {r.flex_max_batched_tokens} tokens")
    print(f"flex tokens/s: tiers {r.flex_tokens_s_tiers:.1f}, FCFS {r.flex_tokens_s_fcfs:.1f}; preempted flex "
          f"requests with identical output: {r.preempted_flex_identical}/{r.preempted_flex}")
    if r.prefill_arrivals:
        print(f"online arrivals during flex prefill: {r.prefill_arrivals}; wait for their own prefill p50 "
              f"{r.start_wait_ms_p50:.1f} ms, p99 {r.start_wait_ms_p99:.1f} ms; within one layer + one step: "
              f"{r.start_within_bound}/{r.prefill_arrivals} (flex prefill step p50 "
              f"{r.flex_prefill_step_ms_p50:.1f} ms, {r.num_layers} layers); flex steps dropped between layers: "
              f"{r.abandoned_steps}")
    return 0


def _bench_engine(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from edgecloud.llm.benchmark import bench_engine

    console = Console()
    if args.peer is not None:
        args.input_len, args.output_len = args.input_len or (128, 128), args.output_len or (128, 128)
        with _model_errors():
            return _bench_peer(args, console)
    args.input_len, args.output_len = args.input_len or (32, 256), args.output_len or (32, 128)
    with console.status("running the engine, then transformers generate, on the same requests..."), \
            _model_errors():
        result = bench_engine(
            args.model, args.num_prompts, args.input_len, args.output_len, batch_size=args.batch_size,
            threads=args.threads, dtype=args.dtype, seed=args.seed, attention_backend=args.attention_backend,
            json_path=args.json,
        )
    table = Table(title=f"bench engine: {args.num_prompts} requests, batch {args.batch_size}, {args.threads} threads")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name in ("engine_tok_s", "hf_tok_s", "speedup", "roofline_tok_s", "roofline_fraction",
                 "memory_gb_s", "matmul_gflop_s", "engine_steps"):
        value = getattr(result, name)
        table.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
    return 0


def _bench_peer(args: argparse.Namespace, console: object) -> int:
    from rich.table import Table

    from edgecloud.errors import USAGE, CLIError
    from edgecloud.llm.bench_peer import bench_peer

    model = Path(args.model)
    if model.suffix != ".gguf" or not model.is_file():
        raise CLIError(f"--peer needs --model to be a .gguf file, got {args.model!r}", USAGE)
    try:
        streams = tuple(int(s) for s in args.streams.split(","))
    except ValueError:
        raise CLIError(f"--streams must be comma-separated integers, got {args.streams!r}", USAGE) from None
    quantizations = tuple(args.engine_quantization.split(","))
    bad = [q for q in quantizations if q not in ("int4", "int8", "none")]
    if bad or min(streams) < 1:
        raise CLIError(f"--engine-quantization takes int4, int8, none; --streams >= 1 (got "
                       f"{args.engine_quantization!r}, {args.streams!r})", USAGE)
    r = bench_peer(model, args.peer, streams, args.input_len[0], args.output_len[0], args.threads, quantizations,
                   args.dtype, args.seed, args.json, args.perplexity_text)
    print(f"{r.cpu} ({', '.join(r.cpu_flags)}); {r.threads} threads; {r.peer} {r.peer_version}; "
          f"{r.memory_gb_s:.1f} GB/s copy, {r.matmul_gflop_s:.0f} GFLOP/s fp32; load {r.load_average_before} -> "
          f"{r.load_average_after}")
    table = Table(title=f"bench engine --peer {r.peer}: {r.prompt_tokens}-token prompts, "
                  f"{r.output_tokens} greedy tokens")
    for column in ("streams", "engine weights", "engine decode tok/s", f"{r.peer} decode tok/s", "decode ratio",
                   "engine prefill tok/s", f"{r.peer} prefill tok/s", "prefill ratio"):
        table.add_column(column, justify="right")
    for c in r.cases:
        table.add_row(str(c.streams), c.engine_dtype.split(" (")[0], f"{c.engine_decode_tok_s:.1f}",
                      f"{c.peer_decode_tok_s:.1f}",
                      f"{c.decode_ratio:.2f}", f"{c.engine_prefill_tok_s:.0f}", f"{c.peer_prefill_tok_s:.0f}",
                      f"{c.prefill_ratio:.2f}")
    console.print(table)  # type: ignore[attr-defined]
    for label in dict.fromkeys(c.engine_dtype for c in r.cases):  # the full labels the table shortens
        if " (" in label:
            print(f"engine weights {label.split(' (')[0]}: {label}")
    print("bits per weight: " + ", ".join(f"{k} {v:.2f}" for k, v in r.weight_bits.items()))
    for label, value in r.perplexity.items():
        print(f"perplexity, {label}: {value if isinstance(value, str) else f'{value:.3f}'}")
    for label, fraction in r.roofline_fraction_1_stream.items():
        print(f"one-stream decode, {label}: {100 * fraction:.0f}% of this machine's roofline")
    for label, parts in r.breakdown.items():
        for b in parts:
            head = (f"layers {b.layers_ms:.1f} + LM head {b.lm_head_ms:.1f}" if b.lm_head_ms is not None
                    else f"layers and LM head in one call {b.layers_ms:.1f}")
            print(f"decode step, {label}, {b.streams} stream(s): {b.step_ms:.1f} ms = {head} + "
                  f"sampling {b.sampling_ms:.2f} + host {b.host_ms:.1f}")
    return 0
