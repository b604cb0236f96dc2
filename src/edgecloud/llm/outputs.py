"""What the engine returns: the core's per-step deltas (``EngineCoreOutput``), and the vLLM-shaped
request and completion outputs the front end builds from them.

The core's messages cross a process boundary as msgpack (``msgspec``): they are plain structs,
and a request costs O(1) bytes per step whatever its length.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import msgspec


@dataclass
class TokenLogprob:
    """Log-probability of one generated token under the model (before any sampling transform),
    and the ``top`` most likely tokens at that position as ``(token_id, logprob)``."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


class EngineCoreOutput(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One request's progress in one step: the tokens sampled since the previous output.

    ``finish_reason``: ``stop`` (EOS or a stop token), ``length``, ``abort`` or ``error``;
    ``stop_reason`` is the stop token id when one of the request's ``stop_token_ids`` ended it
    (None for EOS, as vLLM). ``num_cached_tokens`` (prompt tokens found in the prefix cache) comes
    with the first output. ``kv_block_keys``: with ``kv_transfer.export``, the pinned keys of the
    request's full blocks, on the final output. ``error`` says why a request failed."""

    request_id: str
    new_token_ids: list[int] = []
    new_logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_reason: int | None = None
    num_cached_tokens: int | None = None
    first_scheduled_time: float | None = None  # the core's clock (time.monotonic: one per host)
    kv_block_keys: list[bytes] | None = None
    error: str | None = None
    error_param: str | None = None  # set when the request was invalid (a 400, not a 500)
    invalid: bool = False

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class MoEStats:
    """Routing counters of a mixture-of-experts model, counted since the engine started (they only
    grow; ``expert_load``'s ``reset`` does not touch them): top-k choices per logical expert and
    tokens computed per expert-parallel rank, per MoE layer, and the bytes of expert weights that
    live rebalancing copied."""

    layers: list[int]
    expert_choices: list[list[int]]  # [moe layer][expert]
    rank_tokens: list[list[int]]  # [moe layer][EP rank]
    migrated_bytes: int = 0


@dataclass
class EngineStats:
    num_waiting: int
    num_running: int
    num_free_blocks: int
    num_total_blocks: int
    kv_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int
    prompt_tokens_total: int
    generation_tokens_total: int
    num_preemptions: int
    num_steps: int = 0
    moe: MoEStats | None = None  # routing counters, for a model with MoE layers
    num_abandoned_steps: int = 0  # flex-only steps dropped between layers for online work


class EngineCoreOutputs(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What one step (or one batch of commands) of the core produced, with the core's counters."""

    outputs: list[EngineCoreOutput] = []
    stats: EngineStats | None = None
    timestamp: float = 0.0


class OutputKind(enum.Enum):
    """What ``RequestOutput``s a caller gets: every step's new part (``DELTA``, for streaming
    servers), everything so far at every step (``CUMULATIVE``), or only the final output."""

    DELTA = "delta"
    CUMULATIVE = "cumulative"
    FINAL_ONLY = "final_only"


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None
    finish_reason: str | None = None  # None while running; "stop" | "length" | "abort" | "error"
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
class RequestOutput:
    """One request's output. With ``OutputKind.DELTA`` each completion's ``text``, ``token_ids``
    and ``logprobs`` hold only what is new since the last output, and ``outputs`` lists only the
    completions that progressed."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    num_cached_tokens: int = 0
    kv_block_keys: list[bytes] | None = None
    # Why the request failed: InvalidRequestError (the caller's fault) or EngineError; front-end only.
    error: Exception | None = None
