"""The engine core's one request schema: what a front end sends to the core, across a process
boundary or not (design: docs/engine-core.md).

Text never crosses: the front end tokenizes and detokenizes. Everything that decides where a
request's KV lives or how it is scheduled is here, so every system above the engine (LoRA
adapters, service tiers, P/D hand-over, edge sessions) speaks to the core through one struct.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from edgecloud.llm.sampling_params import SamplingParams

ServiceTier = Literal["default", "flex"]
SERVICE_TIERS: tuple[ServiceTier, ...] = ("default", "flex")


class KVTransferParams(msgspec.Struct, frozen=True, omit_defaults=True):
    """KV hand-over of one request. ``export``: when the request finishes, its full KV blocks stay
    pinned in the cache and their keys come back in the final output, for another engine to fetch
    (``export_blocks``) and import; the exporter unpins them."""

    export: bool = False


class EngineCoreRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One request to the engine core: one sequence of token ids to continue.

    ``service_tier``: ``default`` is online, latency-sensitive work; ``flex`` is latency-relaxed,
    best-effort work that ``default`` requests preempt (OpenAI's names). ``priority``: smaller is
    more urgent, within a tier. ``adapter_id`` and ``cache_salt`` are part of every KV block key,
    so requests of another adapter or tenant never share cached blocks. ``sample_index`` seeds
    the request's own generator (the i-th of ``n`` samples of one prompt); ``wait_for`` names
    the sibling whose prefill this request waits for, so the prompt is computed once.
    """

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    arrival_time: float
    priority: int = 0
    service_tier: ServiceTier = "default"
    adapter_id: str | None = None
    cache_salt: str | None = None
    session_id: str | None = None
    kv_transfer: KVTransferParams | None = None
    sample_index: int = 0
    wait_for: str | None = None
