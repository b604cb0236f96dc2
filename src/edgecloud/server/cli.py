"""``edgecloud serve``: run the OpenAI-compatible server over the engine."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from edgecloud.llm.cli import add_engine_options, engine_config_from_args


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
    http.add_argument(
        "--engine-core", default="process", choices=["process", "thread"],
        help="where the engine core runs: its own process (default; a crash is reported and the core "
        "restarted) or a thread of the server process (shares the HTTP server's GIL)",
    )
    add_engine_options(parser)
    lora = parser.add_argument_group("LoRA adapters (docs/lora.md)")
    lora.add_argument("--enable-lora", action="store_true",
                      help="serve LoRA adapters (implied by --lora-modules); load more with POST /v1/load_lora_adapter")
    lora.add_argument("--lora-modules", nargs="+", type=_lora_module, default=[], metavar="NAME=PATH",
                      help="PEFT adapter directories to serve; a request's model=NAME selects one")
    lora.add_argument("--max-loras", type=_positive_int, default=4,
                      help="device slots: the most distinct adapters among running requests")
    lora.add_argument("--max-lora-rank", type=_positive_int, default=16, help="the largest adapter rank served")
    lora.add_argument("--max-cpu-loras", type=_positive_int, default=32,
                      help="adapters kept parsed in host memory (others are read from disk again when needed)")
    parser.set_defaults(handler=_serve_handler)


def _lora_module(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"must be NAME=PATH, got {text!r}")
    return name, path


def _serve_handler(args: argparse.Namespace) -> int:
    from edgecloud.errors import USAGE, CLIError
    from edgecloud.llm import InvalidRequestError
    from edgecloud.server.main import ServerSettings, serve

    try:
        config = dataclasses.replace(
            engine_config_from_args(args), enable_lora=args.enable_lora, lora_modules=tuple(args.lora_modules),
            max_loras=args.max_loras, max_lora_rank=args.max_lora_rank, max_cpu_loras=args.max_cpu_loras,
        )
    except InvalidRequestError as error:
        raise CLIError(str(error), USAGE) from error
    settings = ServerSettings(
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        max_waiting=args.max_waiting,
        max_body_bytes=args.max_body_bytes,
        graceful_timeout_s=args.graceful_timeout,
        log_level=args.log_level,
        engine_core=args.engine_core,
    )
    return serve(config, settings)
