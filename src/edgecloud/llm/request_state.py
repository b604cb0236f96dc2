"""A request inside the engine core: its tokens, its place in the schedule, its KV blocks.

One request is one sequence (``n > 1`` is fanned out by the front end). The scheduler, the KV
cache manager and the executor share this state within the core process; it never crosses the
process boundary (``EngineCoreRequest`` does, and ``EngineCoreOutput`` comes back).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from edgecloud.llm.kv_cache.keys import BlockKey
from edgecloud.llm.request import EngineCoreRequest, KVTransferParams
from edgecloud.llm.sampling_params import SamplingParams

TIER_RANK = {"default": 0, "flex": 1}


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class SavedPartial:
    """The partly filled last block a preempted request left in the free queue (one per layer group),
    and how many of its tokens were computed; the request takes it back on resume if untouched."""

    num_full_blocks: int
    num_tokens: int
    block_ids: list[int]


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    order: int  # admission order: the FCFS tie-break
    priority: int = 0
    service_tier: str = "default"
    adapter_id: str | None = None
    cache_salt: str | None = None
    session_id: str | None = None
    kv_transfer: KVTransferParams | None = None
    sample_index: int = 0
    wait_for: str | None = None
    all_token_ids: list[int] = field(default_factory=list)
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    block_tables: list[list[int]] = field(default_factory=list)  # per layer group
    block_keys: list[BlockKey] = field(default_factory=list)  # keys of the leading full, computed blocks
    root: BlockKey | None = None
    # ``(root, keys)``: the keys of the prompt's full blocks from ``root``, computed ahead by whoever
    # had them (a router); the KV manager takes them instead of hashing the blocks again when its
    # own root is ``root``
    key_hint: tuple[BlockKey, list[BlockKey]] | None = None
    partial: SavedPartial | None = None
    generator: Any = None  # the executor's per-request torch.Generator (seeded requests)
    grammar: Any = None  # the executor's per-request grammar matcher (structured outputs)
    num_cached_tokens: int | None = None  # prompt tokens found in the prefix cache when first scheduled
    first_scheduled_time: float | None = None
    num_preemptions: int = 0
    finish_reason: str | None = None
    stop_reason: int | None = None

    @classmethod
    def from_core_request(cls, req: EngineCoreRequest, order: int, num_groups: int) -> Request:
        return cls(
            request_id=req.request_id, prompt_token_ids=list(req.prompt_token_ids), params=req.params,
            arrival_time=req.arrival_time, order=order, priority=req.priority, service_tier=req.service_tier,
            adapter_id=req.adapter_id, cache_salt=req.cache_salt, session_id=req.session_id,
            kv_transfer=req.kv_transfer, sample_index=req.sample_index, wait_for=req.wait_for,
            all_token_ids=list(req.prompt_token_ids), block_tables=[[] for _ in range(num_groups)],
        )

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[len(self.prompt_token_ids) :]

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED

    @property
    def sort_key(self) -> tuple[int, int, float, int]:
        """Scheduling order: ``default`` tier before ``flex``, smaller priority first, then FCFS."""
        return (TIER_RANK[self.service_tier], self.priority, self.arrival_time, self.order)
