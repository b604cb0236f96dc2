"""``edgecloud serve``: run the OpenAI-compatible server over the engine."""

from __future__ import annotations

import argparse
from typing import Any


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine's options (``EngineConfig``), as every command that starts an engine takes them."""
    engine = parser.add_argument_group("engine")
    engine.add_argument("--model", help="Hugging Face model directory (default: the embedded demo model)")
    engine.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    engine.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    engine.add_argument("--block-size", type=_positive_int, default=16, help="tokens per KV block")
    engine.add_argument(
        "--kv-cache-memory-mb", type=_positive_int, default=512, help="KV-cache pool size (MiB)"
    )
    engine.add_argument("--max-num-seqs", type=_positive_int, default=64, help="sequences per step")
    engine.add_argument("--max-num-batched-tokens", type=_positive_int, default=2048)
    engine.add_argument("--max-model-len", type=_positive_int, help="default: the model's context")
    engine.add_argument(
        "--no-prefix-caching", dest="enable_prefix_caching", action="store_false",
        help="do not reuse the KV of shared prompt prefixes",
    )
    engine.add_argument("--attention-backend", default="paged", help="decode attention: paged | prefix")
    engine.add_argument("--seed", type=int, default=0)
    engine.add_argument("--num-threads", type=_positive_int, help="torch CPU threads (default: torch's)")


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "model": args.model,
        "dtype": args.dtype,
        "device": args.device,
        "block_size": args.block_size,
        "kv_cache_memory_mb": args.kv_cache_memory_mb,
        "max_num_seqs": args.max_num_seqs,
        "max_num_batched_tokens": args.max_num_batched_tokens,
        "max_model_len": args.max_model_len,
        "enable_prefix_caching": args.enable_prefix_caching,
        "attention_backend": args.attention_backend,
        "seed": args.seed,
        "num_threads": args.num_threads,
    }


def register(commands: Any, bench: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="OpenAI-compatible HTTP server (completions, chat, metrics) over the engine",
        description="Serve a model over the OpenAI API: /v1/completions, /v1/chat/completions, "
        "/v1/models, /health and Prometheus /metrics.",
    )
    http = parser.add_argument_group("server")
    http.add_argument("--host", default="127.0.0.1")
    http.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed at start)")
    http.add_argument("--served-model-name", help="model id clients use (default: the engine's name)")
    http.add_argument(
        "--max-waiting", type=_positive_int, default=256,
        help="refuse new requests with 503 + Retry-After while this many wait in the engine",
    )
    http.add_argument(
        "--max-body-bytes", type=_positive_int, default=8 * 1024 * 1024,
        help="larger request bodies get 413",
    )
    http.add_argument(
        "--graceful-timeout", type=_non_negative_float, default=30.0,
        help="on SIGTERM, seconds to let in-flight requests finish before exiting",
    )
    http.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    add_engine_arguments(parser)
    parser.set_defaults(handler=_serve_handler)


def _serve_handler(args: argparse.Namespace) -> int:
    from edgecloud.server.main import ServerSettings, serve

    settings = ServerSettings(
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        max_waiting=args.max_waiting,
        max_body_bytes=args.max_body_bytes,
        graceful_timeout_s=args.graceful_timeout,
        log_level=args.log_level,
    )
    return serve(engine_options(args), settings)
