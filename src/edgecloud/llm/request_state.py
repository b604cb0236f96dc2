"""Requests and their sequences: the state the scheduler, block manager and sampler share.

A request with ``n > 1`` starts as one sequence; when its prompt is prefilled it forks into
``n`` sequences that share the prompt's KV blocks.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from edgecloud.llm.detokenizer import IncrementalDetokenizer
from edgecloud.llm.outputs import KVExport, RequestMetrics, TokenLogprob
from edgecloud.llm.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Request:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int
    metrics: RequestMetrics
    lora_name: str | None = None
    seqs: list[Sequence] = field(default_factory=list)
    num_cached_tokens: int = 0
    export_kv: bool = False
    kv: KVExport | None = None

    @property
    def finished(self) -> bool:
        return len(self.seqs) == self.params.n and all(s.finished for s in self.seqs)


@dataclass(eq=False)
class Sequence:
    seq_id: int
    request: Request
    index: int
    token_ids: list[int]
    detokenizer: IncrementalDetokenizer
    generator: torch.Generator | None
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    @property
    def sort_key(self) -> tuple[int, float, int]:
        """Scheduling order: smaller priority first, then earlier arrival (FCFS)."""
        return (self.request.priority, self.request.metrics.arrival_time, self.seq_id)
