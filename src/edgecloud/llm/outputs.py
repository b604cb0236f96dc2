"""What the engine returns: vLLM-shaped request and completion outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class TokenLogprob:
    """Log-probability of one generated token under the model (before any sampling transform),
    and the ``top`` most likely tokens at that position as ``(token_id, logprob)``."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None = None  # None while running; "stop" | "length" | "abort"
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None


@dataclass
class KVExport:
    """A sequence's computed KV, portable between engines serving the same model (prefill on one
    instance, decode on another). ``keys``/``values``: ``[num_layers, len(token_ids), kv_heads,
    head_dim]`` on the CPU."""

    token_ids: list[int]
    keys: torch.Tensor
    values: torch.Tensor


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    num_cached_tokens: int = 0
    kv: KVExport | None = None  # set on the final output when the request asked for export_kv
