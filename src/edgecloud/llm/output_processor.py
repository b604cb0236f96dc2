"""The front end's side of the engine: requests in as text or token ids, core deltas out as
``RequestOutput``s (design: docs/engine-core.md).

``add`` validates and fans a request out into the core's requests (``n`` samples become ``n``
core requests; samples 1..n-1 wait for sample 0 to prefill the prompt, then reuse its blocks).
``process`` turns the core's per-step deltas into text with an incremental detokenizer, cuts the
text at stop strings (returning the core requests to abort), gathers the ``n`` samples of a
request, and hands out outputs of the kind each caller asked for. Nothing here touches torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from edgecloud.llm.detokenizer import IncrementalDetokenizer
from edgecloud.llm.engine_core import EngineInfo, validate_core_request
from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.outputs import (
    CompletionOutput,
    EngineCoreOutput,
    OutputKind,
    RequestMetrics,
    RequestOutput,
    TokenLogprob,
)
from edgecloud.llm.request import SERVICE_TIERS, EngineCoreRequest, KVTransferParams
from edgecloud.llm.sampling_params import SamplingParams
from edgecloud.llm.tokenizer import Tokenizer

Prompt = str | list[int]


class EngineError(RuntimeError):
    """The engine failed while running a request (not the caller's fault)."""


class EngineDeadError(EngineError):
    """The engine core stopped (its process died); in-flight requests cannot complete."""


@dataclass
class _Sample:
    """One of a request's ``n`` completions: one core request."""

    index: int
    core_id: str
    detokenizer: IncrementalDetokenizer
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    sent_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    error: Exception | None = None


@dataclass
class _RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    kind: OutputKind
    metrics: RequestMetrics
    samples: list[_Sample]
    num_cached_tokens: int = 0
    kv_block_keys: list[bytes] | None = None

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.samples)


class OutputProcessor:
    def __init__(self, tokenizer: Tokenizer, info: EngineInfo) -> None:
        self.tokenizer = tokenizer
        self.info = info
        self.requests: dict[str, _RequestState] = {}
        self._by_core_id: dict[str, tuple[_RequestState, _Sample]] = {}

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def core_ids(self, request_id: str) -> list[str]:
        state = self.requests.get(request_id)
        return [] if state is None else [s.core_id for s in state.samples if s.finish_reason is None]

    # -- requests in ----------------------------------------------------------------------------

    def tokenize(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt) if prompt else []
        return None, list(prompt)

    def add(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams,
        arrival_time: float,
        *,
        kind: OutputKind = OutputKind.CUMULATIVE,
        priority: int = 0,
        service_tier: str = "default",
        adapter_id: str | None = None,
        cache_salt: str | None = None,
        session_id: str | None = None,
        kv_transfer: KVTransferParams | None = None,
        prompt_token_ids: list[int] | None = None,
    ) -> list[EngineCoreRequest]:
        """Validates and registers a request; returns the core requests to send. Raises
        ``InvalidRequestError`` (nothing registered) for a request that cannot run."""
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use", "request_id")
        if service_tier not in SERVICE_TIERS:
            raise InvalidRequestError(f"service_tier must be one of {list(SERVICE_TIERS)}, got {service_tier!r}",
                                      "service_tier")
        if prompt_token_ids is None:
            text, ids = self.tokenize(prompt)
        else:
            text, ids = (prompt if isinstance(prompt, str) else None), prompt_token_ids
        core_requests = [
            EngineCoreRequest(
                request_id=request_id if params.n == 1 else f"{request_id}#{index}", prompt_token_ids=ids,
                params=params, arrival_time=arrival_time, priority=priority, service_tier=service_tier,
                adapter_id=adapter_id, cache_salt=cache_salt, session_id=session_id,
                kv_transfer=kv_transfer if index == 0 else None, sample_index=index,
                wait_for=None if index == 0 or params.n == 1 else f"{request_id}#0",
            )
            for index in range(params.n)
        ]
        validate_core_request(core_requests[0], self.info)
        samples = [
            _Sample(
                index=index, core_id=req.request_id,
                detokenizer=IncrementalDetokenizer(
                    self.tokenizer, ids, params.skip_special_tokens, params.stop_strings,
                    params.include_stop_str_in_output,
                ),
                logprobs=[] if params.logprobs is not None else None,
            )
            for index, req in enumerate(core_requests)
        ]
        state = _RequestState(request_id, text, ids, params, kind, RequestMetrics(arrival_time=arrival_time), samples)
        self.requests[request_id] = state
        for sample in samples:
            self._by_core_id[sample.core_id] = (state, sample)
        return core_requests

    def abort(self, request_id: str) -> RequestOutput | None:
        """Forgets a request, reporting it finished with ``abort`` (its core requests are the
        caller's to abort: ``core_ids`` before calling this)."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return None
        for sample in state.samples:
            self._by_core_id.pop(sample.core_id, None)
            if sample.finish_reason is None:
                sample.finish_reason = "abort"
        return self._final(state)

    # -- deltas in, outputs out ----------------------------------------------------------------

    def process(self, outputs: list[EngineCoreOutput], now: float) -> tuple[list[RequestOutput], list[str]]:
        """Applies one batch of core outputs. Returns the request outputs to hand out and the
        core requests to abort (their text reached a stop string)."""
        touched: dict[str, tuple[_RequestState, list[_Sample]]] = {}
        to_abort: list[str] = []
        for out in outputs:
            entry = self._by_core_id.get(out.request_id)
            if entry is None:
                continue  # a request already finished here (a stop string) or aborted
            state, sample = entry
            if sample.finish_reason is not None:
                continue
            if out.num_cached_tokens is not None and sample.index == 0:
                state.num_cached_tokens = out.num_cached_tokens
            if out.first_scheduled_time is not None and state.metrics.first_scheduled_time is None:
                state.metrics.first_scheduled_time = out.first_scheduled_time
            if out.kv_block_keys is not None:
                state.kv_block_keys = out.kv_block_keys
            self._apply(sample, out, now, state.metrics)
            if sample.finish_reason == "stop" and isinstance(sample.stop_reason, str) and not out.finished:
                to_abort.append(sample.core_id)
            touched.setdefault(state.request_id, (state, []))[1].append(sample)
        results = []
        for state, samples in touched.values():
            finished = state.finished
            if finished:
                state.metrics.finished_time = now
                self.requests.pop(state.request_id, None)
                for sample in state.samples:
                    self._by_core_id.pop(sample.core_id, None)
            output = self._output(state, samples, finished)
            if output is not None:
                results.append(output)
        return results, to_abort

    def _apply(self, sample: _Sample, out: EngineCoreOutput, now: float, metrics: RequestMetrics) -> None:
        if out.error is not None:
            sample.error = InvalidRequestError(out.error, out.error_param) if out.invalid else EngineError(out.error)
        for i, token in enumerate(out.new_token_ids):
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            sample.token_ids.append(token)
            if sample.logprobs is not None and out.new_logprobs is not None:
                sample.logprobs.append(out.new_logprobs[i])
            stop = sample.detokenizer.add(token)
            if stop is not None:
                sample.finish_reason, sample.stop_reason = "stop", stop
                return
        if out.finish_reason is not None:
            sample.finish_reason, sample.stop_reason = out.finish_reason, out.stop_reason

    def _output(self, state: _RequestState, progressed: list[_Sample], finished: bool) -> RequestOutput | None:
        if state.kind is OutputKind.FINAL_ONLY:
            return self._final(state) if finished else None
        if state.kind is OutputKind.CUMULATIVE:
            return self._final(state, finished)
        completions = []
        for sample in progressed:
            done = sample.finish_reason is not None
            tokens = sample.token_ids[sample.sent_tokens :]
            logprobs = None if sample.logprobs is None else sample.logprobs[sample.sent_tokens :]
            sample.sent_tokens = len(sample.token_ids)
            completions.append(CompletionOutput(
                index=sample.index, text=sample.detokenizer.take(done), token_ids=tokens, logprobs=logprobs,
                finish_reason=sample.finish_reason, stop_reason=sample.stop_reason,
            ))
        return self._request_output(state, completions, finished)

    def _final(self, state: _RequestState, finished: bool = True) -> RequestOutput:
        completions = [
            CompletionOutput(
                index=s.index, text=s.detokenizer.text, token_ids=list(s.token_ids),
                logprobs=None if s.logprobs is None else list(s.logprobs),
                finish_reason=s.finish_reason, stop_reason=s.stop_reason,
            )
            for s in state.samples
        ]
        return self._request_output(state, completions, finished)

    @staticmethod
    def _request_output(state: _RequestState, completions: list[CompletionOutput], finished: bool) -> RequestOutput:
        error = next((s.error for s in state.samples if s.error is not None), None)
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_token_ids,
            outputs=completions,
            finished=finished,
            metrics=state.metrics,
            num_cached_tokens=state.num_cached_tokens,
            kv_block_keys=state.kv_block_keys,
            error=error,
        )
