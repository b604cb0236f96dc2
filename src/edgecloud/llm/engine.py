"""The synchronous engine (request -> scheduler -> runner -> sampler -> output) and the offline
``LLM`` API in vLLM's shape."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgecloud.llm.attention import make_decode_backend
from edgecloud.llm.block_manager import BlockManager
from edgecloud.llm.config import EngineConfig, ModelConfig, read_generation_defaults
from edgecloud.llm.detokenizer import IncrementalDetokenizer
from edgecloud.llm.errors import InvalidRequestError, ModelLoadError
from edgecloud.llm.loader import load_model
from edgecloud.llm.model_runner import ModelRunner, kv_bytes_per_block
from edgecloud.llm.outputs import CompletionOutput, KVExport, RequestMetrics, RequestOutput, TokenLogprob
from edgecloud.llm.sampler import Sampler, SampleRow
from edgecloud.llm.sampling_params import SamplingParams
from edgecloud.llm.scheduler import Scheduler, SchedulerOutput
from edgecloud.llm.sequence import Request, Sequence, SequenceStatus
from edgecloud.llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)

Prompt = str | list[int]


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


def resolve_model_dir(model: str | None) -> Path:
    if model is None:
        from edgecloud.llm.demo_model import DEMO_MODEL_DIR

        return Path(DEMO_MODEL_DIR)
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"model directory {str(path)!r} does not exist (pass an HF model directory)")
    return path


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        self.model_dir = resolve_model_dir(config.model)
        self.model_name = config.model or "edgecloud-demo"
        self.model_config = ModelConfig.from_file(self.model_dir / "config.json")
        self.tokenizer = Tokenizer(self.model_dir)
        self.generation_defaults = read_generation_defaults(self.model_dir)
        mc = self.model_config
        limit = mc.max_position_embeddings
        if mc.sliding_window:  # capped so full attention equals the model's windowed attention
            limit = min(limit, mc.sliding_window)
        if config.max_model_len is not None and config.max_model_len > limit:
            raise InvalidRequestError(
                f"max_model_len must be <= {limit} for this model, got {config.max_model_len}", "max_model_len"
            )
        self.max_model_len = config.max_model_len or limit
        self.device = torch.device(config.device)
        self.dtype = config.resolve_dtype(mc)
        model = load_model(self.model_dir, mc, self.dtype, self.device, self.max_model_len)
        num_blocks = int(config.kv_cache_memory_mb * 2**20 // kv_bytes_per_block(mc, config.block_size, self.dtype))
        if num_blocks < 2:
            raise InvalidRequestError(
                f"kv_cache_memory_mb={config.kv_cache_memory_mb} holds {num_blocks} blocks; need >= 2",
                "kv_cache_memory_mb",
            )
        self.block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.runner = ModelRunner(
            model, mc, num_blocks, config.block_size, self.dtype, self.device,
            make_decode_backend(config.attention_backend),
        )
        self.sampler = Sampler(config.seed)
        self.stop_token_ids = set(mc.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            self.stop_token_ids.add(self.tokenizer.eos_token_id)
        self.lora_adapters: dict[str, object] = {}
        # Called with each step's schedule before it runs (benchmarks use it to account the step).
        self.on_step: Callable[[SchedulerOutput], None] | None = None
        self.requests: dict[str, Request] = {}
        self._seq_ids = itertools.count()
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0

    # -- requests ---------------------------------------------------------------------------

    def make_request(
        self,
        request_id: str,
        prompt: Prompt,
        params: SamplingParams,
        priority: int = 0,
        arrival_time: float | None = None,
        lora_name: str | None = None,
    ) -> Request:
        """Validates and tokenizes; touches no engine state (safe from any thread)."""
        if isinstance(prompt, str):
            text: str | None = prompt
            ids = self.tokenizer.encode(prompt) if prompt else []
        else:
            text, ids = None, list(prompt)
            if any(not isinstance(t, int) or not 0 <= t < self.model_config.vocab_size for t in ids):
                raise InvalidRequestError(
                    f"prompt token ids must be integers in [0, {self.model_config.vocab_size})", "prompt"
                )
        if not ids:
            raise InvalidRequestError("prompt must not be empty", "prompt")
        if len(ids) >= self.max_model_len:
            raise InvalidRequestError(
                f"prompt has {len(ids)} tokens; this model's context is {self.max_model_len} "
                f"(prompt must be shorter to leave room for output)",
                "prompt",
            )
        if self.block_manager.blocks_for(len(ids) + 1) > self.block_manager.num_blocks:
            raise InvalidRequestError(
                f"prompt needs {self.block_manager.blocks_for(len(ids) + 1)} KV blocks but the cache "
                f"has {self.block_manager.num_blocks} (raise kv_cache_memory_mb)",
                "prompt",
            )
        if lora_name is not None and lora_name not in self.lora_adapters:
            raise InvalidRequestError(f"unknown LoRA adapter {lora_name!r}", "lora_name")
        metrics = RequestMetrics(arrival_time=time.monotonic() if arrival_time is None else arrival_time)
        return Request(request_id, text, ids, params, priority, metrics, lora_name)

    def add(self, request: Request, kv: KVExport | None = None) -> None:
        """Queues a request. With ``kv`` (exported by an engine serving the same model for a
        prefix of the prompt) those tokens' KV is written into fresh blocks instead of computed."""
        if request.request_id in self.requests:
            raise InvalidRequestError(f"request id {request.request_id!r} is already running", "request_id")
        seq = self._new_sequence(request, 0, list(request.prompt_token_ids))
        if kv is None:
            self.requests[request.request_id] = request
            self.scheduler.add(seq)
            return
        self._check_import(request, kv)
        num_tokens = len(kv.token_ids)
        if not self.block_manager.can_grow(seq, num_tokens + 1):
            raise InvalidRequestError(
                f"not enough free KV blocks to import {num_tokens} tokens; retry later or elsewhere", "kv"
            )
        self.block_manager.grow(seq, num_tokens + 1)
        self.runner.write_kv(seq.block_table, kv.keys, kv.values)
        seq.num_computed_tokens = num_tokens
        self.block_manager.register_computed(seq)
        self.requests[request.request_id] = request
        self.scheduler.add_running(seq)

    def _check_import(self, request: Request, kv: KVExport) -> None:
        mc = self.model_config
        want = (mc.num_hidden_layers, len(kv.token_ids), mc.num_key_value_heads, mc.head_dim)
        if tuple(kv.keys.shape) != want or tuple(kv.values.shape) != want:
            raise InvalidRequestError(f"kv tensors must have shape {want}, got {tuple(kv.keys.shape)}", "kv")
        if not kv.token_ids or kv.token_ids != request.prompt_token_ids[: len(kv.token_ids)]:
            raise InvalidRequestError("kv.token_ids must be a non-empty prefix of the prompt", "kv")
        if len(kv.token_ids) >= len(request.prompt_token_ids):
            raise InvalidRequestError("kv must leave at least the prompt's last token to compute", "kv")

    def add_request(
        self, request_id: str, prompt: Prompt, params: SamplingParams, priority: int = 0,
        export_kv: bool = False, kv: KVExport | None = None,
    ) -> None:
        request = self.make_request(request_id, prompt, params, priority)
        request.export_kv = export_kv
        self.add(request, kv)

    def _new_sequence(self, request: Request, index: int, token_ids: list[int]) -> Sequence:
        p = request.params
        generator = None
        if p.seed is not None:
            generator = torch.Generator().manual_seed(hash((p.seed, index)) & 0x7FFF_FFFF_FFFF_FFFF)
        seq = Sequence(
            seq_id=next(self._seq_ids),
            request=request,
            index=index,
            token_ids=token_ids,
            detokenizer=IncrementalDetokenizer(
                self.tokenizer, request.prompt_token_ids, p.skip_special_tokens,
                p.stop_strings, p.include_stop_str_in_output,
            ),
            generator=generator,
            logprobs=[] if p.logprobs is not None else None,
        )
        request.seqs.append(seq)
        return seq

    def abort(self, request_id: str) -> RequestOutput | None:
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        for seq in request.seqs:
            if not seq.finished:
                self._finish(seq, "abort")
        # Forks not yet made will never be: report the request as complete.
        while len(request.seqs) < request.params.n:
            self._finish(self._new_sequence(request, len(request.seqs), list(request.prompt_token_ids)), "abort")
        return self._output(request)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            num_waiting=len({s.request.request_id for s in self.scheduler.waiting}),
            num_running=len({s.request.request_id for s in self.scheduler.running}),
            num_free_blocks=bm.num_free_blocks,
            num_total_blocks=bm.num_blocks,
            kv_usage=1.0 - bm.num_free_blocks / bm.num_blocks,
            prefix_cache_queries=bm.prefix_queries,
            prefix_cache_hits=bm.prefix_hits,
            prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            num_preemptions=self.scheduler.num_preemptions,
        )

    # -- the step ---------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Schedules, runs the model once, samples; returns outputs of requests that progressed."""
        plan = self.scheduler.schedule()
        touched: dict[str, Request] = {}
        for seq in plan.exhausted:
            self._finish(seq, "length")
            touched[seq.request.request_id] = seq.request
        if not plan.scheduled:
            return self._collect(touched)
        if self.on_step is not None:
            self.on_step(plan)
        now = time.monotonic()
        for s in plan.scheduled:
            metrics = s.seq.request.metrics
            if metrics.first_scheduled_time is None:
                metrics.first_scheduled_time = now
                s.seq.request.num_cached_tokens = s.seq.num_computed_tokens
            if s.seq.num_computed_tokens < s.seq.num_prompt_tokens:
                self.prompt_tokens_total += min(s.num_new_tokens, s.seq.num_prompt_tokens - s.seq.num_computed_tokens)
        logits, order = self.runner.run(plan.scheduled)
        for s in plan.scheduled:
            s.seq.num_computed_tokens += s.num_new_tokens
            self.block_manager.register_computed(s.seq)

        rows: list[SampleRow] = []
        row_seqs: list[Sequence] = []
        row_index: list[int] = []
        for i, s in enumerate(order):
            seq = s.seq
            request = seq.request
            targets = [seq]
            if len(request.seqs) < request.params.n and seq.num_tokens == seq.num_prompt_tokens:
                targets += self._fork(seq, request)
            for target in targets:
                rows.append(SampleRow(request.params, target.generator, request.prompt_token_ids,
                                      target.output_token_ids))
                row_seqs.append(target)
                row_index.append(i)
        if rows:
            index = torch.tensor(row_index)
            tokens, logprobs = self.sampler(logits[index], rows)
            now = time.monotonic()
            for seq, token, logprob in zip(row_seqs, tokens, logprobs, strict=True):
                self._append_token(seq, token, logprob, now)
                touched[seq.request.request_id] = seq.request
        return self._collect(touched)

    def _fork(self, parent: Sequence, request: Request) -> list[Sequence]:
        children = []
        while len(request.seqs) < request.params.n:
            child = self._new_sequence(request, len(request.seqs), list(parent.token_ids))
            try:
                copy = self.block_manager.fork(parent, child)
            except MemoryError:
                # No block to copy the prompt's partial tail into: the child waits and is
                # rebuilt from the prefix cache, then samples its own first token.
                self.scheduler.add(child)
                continue
            if copy is not None:
                self.runner.copy_block(*copy)
            self.scheduler.add_running(child)
            children.append(child)
        return children

    def _append_token(self, seq: Sequence, token: int, logprob: TokenLogprob | None, now: float) -> None:
        request = seq.request
        p = request.params
        if request.metrics.first_token_time is None:
            request.metrics.first_token_time = now
        seq.token_ids.append(token)
        self.generation_tokens_total += 1
        if seq.logprobs is not None:
            assert logprob is not None, "the sampler reports a logprob for every row that asked"
            seq.logprobs.append(logprob)
        stop = seq.detokenizer.add(token)
        num_out = seq.num_tokens - seq.num_prompt_tokens
        if stop is not None:
            self._finish(seq, "stop", stop)
        elif (not p.ignore_eos and token in self.stop_token_ids) or (p.stop_token_ids and token in p.stop_token_ids):
            self._finish(seq, "stop", token)
        elif num_out >= p.max_tokens or seq.num_tokens >= self.max_model_len:
            self._finish(seq, "length")

    def _finish(self, seq: Sequence, reason: str, stop_reason: str | int | None = None) -> None:
        request = seq.request
        if request.export_kv and seq.index == 0 and seq.num_computed_tokens > 0:
            keys, values = self.runner.read_kv(seq.block_table, seq.num_computed_tokens)
            request.kv = KVExport(seq.token_ids[: seq.num_computed_tokens], keys, values)
        self.scheduler.remove(seq)
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        seq.stop_reason = stop_reason

    def _collect(self, touched: dict[str, Request]) -> list[RequestOutput]:
        outputs = []
        for request in touched.values():
            outputs.append(self._output(request))
            if request.finished:
                request.metrics.finished_time = time.monotonic()
                self.requests.pop(request.request_id, None)
        return outputs

    def _output(self, request: Request) -> RequestOutput:
        completions = [
            CompletionOutput(
                index=seq.index,
                text=seq.detokenizer.text,
                token_ids=list(seq.output_token_ids),
                logprobs=list(seq.logprobs) if seq.logprobs is not None else None,
                finish_reason=seq.finish_reason,
                stop_reason=seq.stop_reason,
            )
            for seq in request.seqs
        ]
        return RequestOutput(
            request_id=request.request_id,
            prompt=request.prompt,
            prompt_token_ids=request.prompt_token_ids,
            outputs=completions,
            finished=request.finished,
            metrics=request.metrics,
            num_cached_tokens=request.num_cached_tokens,
            kv=request.kv,
        )


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
    ) -> list[RequestOutput]:
        prompt_list: list[Prompt]
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompt_list = [prompts]  # type: ignore[list-item]  # one prompt: text or token ids
        else:
            prompt_list = list(prompts)  # type: ignore[arg-type]
        prompts = prompt_list
        params = sampling_params or SamplingParams()
        param_list = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(param_list) != len(prompts):
            raise InvalidRequestError(
                f"got {len(param_list)} sampling params for {len(prompts)} prompts", "sampling_params"
            )
        requests = [
            self.engine.make_request(f"offline-{next(self._ids)}", p, sp, (priority or [0] * len(prompts))[i])
            for i, (p, sp) in enumerate(zip(prompts, param_list, strict=True))
        ]
        for request in requests:
            self.engine.add(request)
        final: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished():
            for out in self.engine.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[r.request_id] for r in requests]
