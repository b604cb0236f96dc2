"""The synchronous engine: a front end (tokenizer, ``OutputProcessor``) over an ``EngineCore`` in
the same thread, and the offline ``LLM`` API in vLLM's shape.

``LLMEngine.step`` runs one core step and returns the outputs of the requests that progressed
(cumulative by default, as before; ``OutputKind.DELTA`` per request for streaming callers).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Sequence as SequenceABC
from typing import Any

from edgecloud.llm.config import EngineConfig, ModelConfig
from edgecloud.llm.engine_core import EngineCore
from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.kv_cache import KVCacheManager
from edgecloud.llm.model_source import resolve_model
from edgecloud.llm.output_processor import EngineError, OutputProcessor, Prompt
from edgecloud.llm.outputs import EngineStats, OutputKind, RequestOutput
from edgecloud.llm.request import KVTransferParams
from edgecloud.llm.sampling_params import SamplingParams
from edgecloud.llm.scheduler import Scheduler
from edgecloud.llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

__all__ = ["LLM", "EngineError", "EngineStats", "LLMEngine", "Prompt"]


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        source = resolve_model(config.model)
        self.model_dir = source.directory
        self.model_name = source.name
        self.tokenizer = Tokenizer(source.directory, chat_template=config.chat_template)
        self.core = EngineCore(config, source)
        self.processor = OutputProcessor(self.tokenizer, self.core.info)

    def close(self) -> None:
        """Stops what the engine started besides itself (the LoRA loader thread)."""
        self.core.close()

    # The parts tests and benchmarks look into.
    @property
    def model_config(self) -> ModelConfig:
        return self.core.model_config

    @property
    def scheduler(self) -> Scheduler:
        return self.core.scheduler

    @property
    def kv(self) -> KVCacheManager:
        return self.core.kv

    @property
    def max_model_len(self) -> int:
        return self.core.max_model_len

    @property
    def generation_defaults(self) -> dict[str, float]:
        return self.core.info.generation_defaults

    # -- requests -----------------------------------------------------------------------------

    def add_request(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams,
        priority: int = 0,
        *,
        service_tier: str = "default",
        adapter_id: str | None = None,
        cache_salt: str | None = None,
        session_id: str | None = None,
        kv_transfer: KVTransferParams | None = None,
        output_kind: OutputKind = OutputKind.CUMULATIVE,
        arrival_time: float | None = None,
    ) -> None:
        """Validates, tokenizes and queues a request; raises ``InvalidRequestError`` (nothing queued)."""
        core_requests = self.processor.add(
            request_id, prompt, params, time.monotonic() if arrival_time is None else arrival_time,
            kind=output_kind, priority=priority, service_tier=service_tier, adapter_id=adapter_id,
            cache_salt=cache_salt, session_id=session_id, kv_transfer=kv_transfer,
        )
        try:
            for req in core_requests:
                self.core.add_request(req)
        except InvalidRequestError:
            self.core.abort_requests([r.request_id for r in core_requests])
            self.processor.abort(request_id)
            raise

    def abort(self, request_id: str) -> RequestOutput | None:
        self.core.abort_requests(self.processor.core_ids(request_id))
        return self.processor.abort(request_id)

    def has_unfinished(self) -> bool:
        return self.processor.has_unfinished()

    def stats(self) -> EngineStats:
        return self.core.stats()

    def step(self) -> list[RequestOutput]:
        """One core step; the outputs of the requests that progressed."""
        outputs, to_abort = self.processor.process(self.core.step(), time.monotonic())
        if to_abort:
            self.core.abort_requests(to_abort)
        return outputs


class LLM:
    """Offline batch generation: ``LLM(model=DIR).generate(prompts, params)``."""

    def __init__(self, model: str | None = None, **engine_options: Any) -> None:
        self.engine = LLMEngine(EngineConfig(model=model, **engine_options))
        self._ids = itertools.count()

    @property
    def tokenizer(self) -> Tokenizer:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | SequenceABC[Prompt],
        sampling_params: SamplingParams | SequenceABC[SamplingParams] | None = None,
        priority: SequenceABC[int] | None = None,
        service_tier: SequenceABC[str] | None = None,
    ) -> list[RequestOutput]:
        """Generates for every prompt; raises ``EngineError`` if the engine failed a request."""
        prompt_list: list[Prompt]
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompt_list = [prompts]  # type: ignore[list-item]  # one prompt: text or token ids
        else:
            prompt_list = list(prompts)  # type: ignore[arg-type]
        params = sampling_params or SamplingParams()
        param_list = [params] * len(prompt_list) if isinstance(params, SamplingParams) else list(params)
        if len(param_list) != len(prompt_list):
            raise InvalidRequestError(
                f"got {len(param_list)} sampling params for {len(prompt_list)} prompts", "sampling_params"
            )
        ids = [f"offline-{next(self._ids)}" for _ in prompt_list]
        added: list[str] = []
        try:
            for i, (request_id, prompt, sp) in enumerate(zip(ids, prompt_list, param_list, strict=True)):
                self.engine.add_request(
                    request_id, prompt, sp, (priority or [0] * len(ids))[i],
                    service_tier=(service_tier or ["default"] * len(ids))[i], output_kind=OutputKind.FINAL_ONLY,
                )
                added.append(request_id)
        except InvalidRequestError:
            for request_id in added:
                self.engine.abort(request_id)
            raise
        final: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished():
            for out in self.engine.step():
                if out.finished:
                    final[out.request_id] = out
        failed = next((o.error for o in final.values() if o.error is not None), None)
        if failed is not None:
            raise EngineError(str(failed)) from failed
        return [final[request_id] for request_id in ids]
