"""The engine core: requests in, one step at a time, deltas out (design: docs/engine-core.md).

``step()`` is three parts: the scheduler plans (``schedule``), the executor runs the model and
samples (``execute``), the scheduler applies the result (``update``). The clock is injected and
read once per step, so the same scheduler and KV manager run under a simulator's virtual clock.
The core works on token ids only; the front end (``OutputProcessor``) owns text.

A failing step fails the requests it held (their outputs carry the error) and never the core.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec
import torch

from edgecloud.llm import host_memory
from edgecloud.llm.config import EngineConfig, ModelConfig, read_generation_defaults
from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.kv_cache import KVCacheManager, LayerGroup, model_fingerprint, root_key
from edgecloud.llm.kv_cache.layer_group import pool_sizes
from edgecloud.llm.loader import load_model
from edgecloud.llm.model_runner import ModelRunner, kv_bytes_per_block
from edgecloud.llm.model_source import ModelSource
from edgecloud.llm.outputs import EngineCoreOutput, EngineStats
from edgecloud.llm.request import EngineCoreRequest
from edgecloud.llm.request_state import Request
from edgecloud.llm.scheduler import SampledTokens, Scheduler, SchedulerOutput
from edgecloud.llm.step_context import StepInterrupted
from edgecloud.llm.structured import StructuredOutputs
from edgecloud.llm.tokenizer import Tokenizer

if TYPE_CHECKING:
    from edgecloud.llm.lora import LoRAManager

log = logging.getLogger(__name__)


class EngineInfo(msgspec.Struct, frozen=True):
    """What a front end needs to know of the core it talks to."""

    model_name: str
    model_dir: str
    max_model_len: int
    vocab_size: int
    num_blocks: int
    block_size: int
    dtype: str
    fingerprint: bytes
    generation_defaults: dict[str, float]


class Executor(Protocol):
    """Runs one planned step and returns the sampled tokens: the model runner, or a modelled
    executor in the simulator."""

    def execute(self, plan: SchedulerOutput) -> SampledTokens: ...


def max_model_len_for(config: EngineConfig, mc: ModelConfig) -> int:
    limit = mc.rope.context_length(mc.max_position_embeddings)
    if mc.sliding_window:  # capped so full attention equals the model's windowed attention
        limit = min(limit, mc.sliding_window)
    if config.max_model_len is not None and config.max_model_len > limit:
        raise InvalidRequestError(
            f"max_model_len must be <= {limit} for this model, got {config.max_model_len}", "max_model_len"
        )
    return config.max_model_len or limit


class EngineCore:
    def __init__(
        self,
        config: EngineConfig,
        source: ModelSource,
        clock: Callable[[], float] = time.monotonic,
        executor: Executor | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)  # process-wide: the core's own process by default
        directory = source.directory
        mc = ModelConfig.from_file(directory / "config.json")
        self.model_config = mc
        self.max_model_len = max_model_len_for(config, mc)
        self.device = torch.device(config.device)
        if self.device.type == "cpu":
            host_memory.keep_freed_memory()  # activations reuse last step's pages (host_memory)
        self.dtype = config.resolve_dtype(mc)
        groups, pools = self._layer_groups(config, mc)
        num_blocks = min(pools)
        if num_blocks < 2:
            raise InvalidRequestError(
                f"kv_cache_memory_mb={config.kv_cache_memory_mb} holds {num_blocks} blocks; need >= 2",
                "kv_cache_memory_mb",
            )
        dtype_name = str(self.dtype).removeprefix("torch.")
        fingerprint = model_fingerprint(directory, dtype_name)
        self.kv = KVCacheManager(groups, pools, config.block_size, fingerprint, config.enable_prefix_caching)
        tokenizer = Tokenizer(directory)  # only for its EOS id: text stays in the front end
        eos = set(mc.eos_token_ids)
        if tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        self.scheduler = Scheduler(
            self.kv, config.max_num_seqs, config.max_num_batched_tokens, self.max_model_len, eos,
            max_loras=config.max_loras if config.enable_lora else None,
            flex_max_batched_tokens=config.flex_max_batched_tokens,
        )
        self.lora: LoRAManager | None = None
        if executor is None:
            model = load_model(directory, mc, self.dtype, self.device, self.max_model_len)
            if config.quantization != "none":
                from edgecloud.llm.quant import quantize_model

                report = quantize_model(model, config.quantization, gguf=source.gguf)
                log.info("weights quantized: %s", report)
            from edgecloud.llm.layers import packed

            if packed.available(self.dtype, self.device):
                packed.pack_linears(model)
            if config.enable_lora:
                self.lora = self._start_lora(model, source.name)
                if config.lora_async_loads:
                    self.scheduler.adapter_ready = self.lora.ready
            executor = ModelRunner(
                model, mc, groups, pools, config.block_size, self.dtype, self.device,
                config.attention_backend, config.seed, lora=self.lora,
                structured=StructuredOutputs(directory / "tokenizer.json", mc.vocab_size, sorted(eos)),
            )
        self.executor = executor
        self.info = EngineInfo(
            model_name=source.name, model_dir=str(directory), max_model_len=self.max_model_len,
            vocab_size=mc.vocab_size, num_blocks=self.kv.num_blocks, block_size=config.block_size, dtype=dtype_name,
            fingerprint=fingerprint, generation_defaults=read_generation_defaults(directory),
        )
        # Called with each step's plan before it runs (benchmarks use it to account the step).
        self.on_step: Callable[[SchedulerOutput], None] | None = None
        self._order = 0
        self.num_steps = 0
        # Asked between the layers of a step holding only flex work: True abandons the step for
        # waiting online work (set by the core's service; None: never). docs/engine-core.md.
        self.interrupt: Callable[[], bool] | None = None
        self.num_abandoned_steps = 0
        # EDGECLOUD_STEP_LOG=DIR: one JSON line per executed step into DIR/steps-PID.jsonl (its shapes
        # and seconds; what ``edgecloud sim validate --step-log`` compares with the cost model)
        directory = os.environ.get("EDGECLOUD_STEP_LOG")
        self._step_log = None if not directory else open(  # noqa: SIM115 (open for the core's life)
            os.path.join(directory, f"steps-{os.getpid()}.jsonl"), "a", buffering=1)

    def _layer_groups(self, config: EngineConfig, mc: ModelConfig) -> tuple[list[LayerGroup], list[int]]:
        """The KV layer groups (all layers full, or ``config.kv_layer_pattern``'s) and their pool
        sizes from ``kv_cache_memory_mb`` (``kv_cache.layer_group.pool_sizes``)."""
        block_bytes = kv_bytes_per_block(mc, config.block_size, self.dtype)
        if config.kv_layer_pattern is None:
            return [LayerGroup("full", tuple(range(mc.num_hidden_layers)))], [
                int(config.kv_cache_memory_mb * 2**20 // block_bytes)
            ]
        from edgecloud.llm.omniattn.pattern import LayerPattern

        pattern = LayerPattern.load(config.kv_layer_pattern)
        pattern.check(mc.num_hidden_layers, config.block_size)
        groups = pattern.layer_groups()
        layer_blocks = int(config.kv_cache_memory_mb * 2**20 // (block_bytes // mc.num_hidden_layers))
        longest_prompt = -(-self.max_model_len // config.block_size)
        return groups, pool_sizes(groups, layer_blocks, config.kv_compressed_pool_fraction, longest_prompt)

    # -- requests -----------------------------------------------------------------------------

    def add_request(self, req: EngineCoreRequest) -> None:
        """Queues a request; raises ``InvalidRequestError`` (nothing queued) when it cannot run here."""
        validate_core_request(req, self.info)
        if req.request_id in self.scheduler.requests:
            raise InvalidRequestError(f"request id {req.request_id!r} is already running", "request_id")
        if req.adapter_id is not None and (self.lora is None or not self.lora.has(req.adapter_id)):
            raise InvalidRequestError(f"unknown LoRA adapter {req.adapter_id!r}", "adapter_id")
        self._order += 1
        request = Request.from_core_request(req, self._order, len(self.kv.pools))
        structured = getattr(self.executor, "structured", None)
        if req.params.structured_outputs is not None and structured is not None:
            # refused here (a 400) when max_tokens cannot hold the shortest document
            budget = min(req.params.max_tokens, self.max_model_len - len(req.prompt_token_ids))
            request.grammar = structured.start(req.params.structured_outputs, budget)
        self.scheduler.add(request)

    def abort_requests(self, request_ids: list[str]) -> list[EngineCoreOutput]:
        outputs = []
        for request_id in request_ids:
            req = self.scheduler.requests.get(request_id)
            if req is not None:
                self.scheduler.finish(req, "abort")
                outputs.append(EngineCoreOutput(request_id=request_id, finish_reason="abort"))
        return outputs

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    def close(self) -> None:
        """Releases what the core started besides itself (the LoRA loader thread). The core's own
        process, or the thread that steps an in-process core, calls it when it stops."""
        if self.lora is not None:
            self.lora.close()
        if self._step_log is not None:
            self._step_log.close()
            self._step_log = None

    # -- the step -----------------------------------------------------------------------------

    def step(self) -> list[EngineCoreOutput]:
        started = time.perf_counter()
        plan = self.scheduler.schedule(self.clock())
        if not plan.scheduled and not plan.exhausted and self.lora is not None and self.lora.loading:
            self.lora.wait_for_loads(0.01)  # only requests of adapters being read wait: no busy loop
            return []
        if self.on_step is not None and plan.scheduled:
            self.on_step(plan)
        # a step of flex work only may be abandoned between layers for online work (docs/engine-core.md)
        abandonable = (self.interrupt is not None and bool(plan.scheduled)
                       and all(s.request.service_tier == "flex" for s in plan.scheduled))
        if abandonable and hasattr(self.executor, "interrupt"):
            self.executor.interrupt = self.interrupt
        try:
            sampled = self.executor.execute(plan)
        except StepInterrupted:
            return self._abandon(plan)
        except Exception as error:
            log.exception("engine step failed; failing the %d requests it held", len(plan.scheduled))
            return self._fail(plan, f"engine step failed: {type(error).__name__}: {error}")
        finally:
            if abandonable and hasattr(self.executor, "interrupt"):
                self.executor.interrupt = None
        self.num_steps += 1
        if self._step_log is None:
            return self.scheduler.update(plan, sampled)
        shapes = [[s.num_new_tokens, s.request.num_computed_tokens + s.num_new_tokens, s.samples,
                   s.request.num_computed_tokens < s.request.num_prompt_tokens] for s in plan.scheduled]
        outputs = self.scheduler.update(plan, sampled)
        seconds = time.perf_counter() - started
        self._step_log.write(json.dumps({"start": started, "s": seconds, "shapes": shapes}) + "\n")
        return outputs

    def _abandon(self, plan: SchedulerOutput) -> list[EngineCoreOutput]:
        """Drops a step stopped between layers: no request advances (``update`` does not run), so
        the next steps recompute its tokens into the blocks they already hold."""
        self.num_abandoned_steps += 1
        return self.scheduler.abandon(plan)

    def _fail(self, plan: SchedulerOutput, message: str) -> list[EngineCoreOutput]:
        outputs = []
        for req in [s.request for s in plan.scheduled] + plan.exhausted:
            if not req.finished:
                self.scheduler.finish(req, "error")
                outputs.append(EngineCoreOutput(request_id=req.request_id, finish_reason="error", error=message))
        return outputs

    def stats(self) -> EngineStats:
        s, kv = self.scheduler, self.kv
        return EngineStats(
            num_waiting=len(s.waiting),
            num_running=len(s.running),
            num_free_blocks=kv.num_free_blocks,
            num_total_blocks=kv.num_blocks,
            kv_usage=kv.usage(),
            prefix_cache_queries=kv.prefix_queries,
            prefix_cache_hits=kv.prefix_hits,
            prompt_tokens_total=s.prompt_tokens_total,
            generation_tokens_total=s.generation_tokens_total,
            num_preemptions=s.num_preemptions,
            num_steps=self.num_steps,
            moe=None if getattr(self.executor, "moe", None) is None else self.executor.moe.totals(),
            num_abandoned_steps=self.num_abandoned_steps,
        )

    # -- control ------------------------------------------------------------------------------

    def control(self, op: str, args: dict[str, Any]) -> Any:
        """Operations beside the request flow, by name: what routers, KV hand-over and (later)
        adapter and expert-map managers ask of a core. Raises ``InvalidRequestError`` on bad input."""
        handler = getattr(self, f"_control_{op}", None)
        if handler is None:
            raise InvalidRequestError(f"unknown control operation {op!r}", "op")
        return handler(**args)

    def _control_stats(self) -> EngineStats:
        return self.stats()

    def _control_lookup(
        self, token_ids: list[int], adapter_id: str | None = None, cache_salt: str | None = None
    ) -> int:
        """Prompt tokens this core has cached (whole blocks) for these token ids."""
        return self.kv.lookup(token_ids, root_key(self.kv.fingerprint, adapter_id, cache_salt))

    def _control_block_keys(
        self, token_ids: list[int], adapter_id: str | None = None, cache_salt: str | None = None
    ) -> list[bytes]:
        from edgecloud.llm.kv_cache import chain_keys

        return chain_keys(root_key(self.kv.fingerprint, adapter_id, cache_salt), token_ids, self.kv.block_size)

    def _control_pin(self, keys: list[bytes]) -> list[bytes]:
        return self.kv.pin(keys)

    def _control_unpin(self, keys: list[bytes]) -> None:
        self.kv.unpin(keys)

    def _control_export_blocks(self, keys: list[bytes], unpin: bool = False) -> dict[str, Any]:
        """The cached blocks among ``keys`` (in order, up to the first missing) with their K/V."""
        exports = self.kv.export_blocks(keys)
        result: dict[str, Any] = {
            "keys": [e.key for e in exports],
            "parents": [e.parent for e in exports],
            "tokens": [list(e.tokens) for e in exports],
            "k": None,
            "v": None,
        }
        if exports and all(min(e.block_ids) >= 0 for e in exports):
            k, v = self.executor.read_blocks([e.block_ids for e in exports])  # type: ignore[attr-defined]
            result["k"], result["v"] = k, v
        elif exports:
            # OmniAttn: compressed groups send only what the receiver keeps; rows of (block, layer)
            result["k"], result["v"], result["layers"] = self.executor.read_block_rows(  # type: ignore[attr-defined]
                [e.block_ids for e in exports]
            )
        if unpin:
            self.kv.unpin([e.key for e in exports])
        return result

    def _control_import_blocks(
        self, keys: list[bytes], parents: list[bytes], tokens: list[list[int]], k: torch.Tensor | None,
        v: torch.Tensor | None, layers: list[list[int]] | None = None,
    ) -> int:
        """Writes exported blocks into this core's cache (those not cached already); returns how many.
        ``layers``: the layers each block brings, when not all (an OmniAttn sender's compressed
        layers send only the sink and window); ``k``/``v`` are then ``[rows, ...]``, block by block."""
        if not keys:
            return 0
        if layers is not None:
            return self._import_block_rows(keys, parents, tokens, k, v, layers)
        mc = self.model_config
        want = (len(keys), mc.num_hidden_layers, self.kv.block_size, mc.num_key_value_heads, mc.head_dim)
        for name, tensor in (("k", k), ("v", v)):
            if tensor is None or tuple(tensor.shape) != want:
                got = None if tensor is None else tuple(tensor.shape)
                raise InvalidRequestError(f"{name} must have shape {want}, got {got}", name)
        if not (len(parents) == len(tokens) == len(keys)):
            raise InvalidRequestError("keys, parents and tokens must have the same length", "keys")
        assert k is not None and v is not None
        writes = self.kv.import_blocks([(key, p, tuple(t)) for key, p, t in zip(keys, parents, tokens, strict=True)])
        if writes and all(min(ids) >= 0 for _, ids in writes):
            index = torch.tensor([i for i, _ in writes])
            self.executor.write_blocks([ids for _, ids in writes], k[index], v[index])  # type: ignore[attr-defined]
        elif writes:
            every = list(range(mc.num_hidden_layers))
            rows = k.flatten(0, 1), v.flatten(0, 1)
            self._write_rows(writes, rows, [every] * len(keys))
        return len(writes)

    def _import_block_rows(
        self, keys: list[bytes], parents: list[bytes], tokens: list[list[int]], k: torch.Tensor | None,
        v: torch.Tensor | None, layers: list[list[int]],
    ) -> int:
        mc = self.model_config
        if not (len(parents) == len(tokens) == len(layers) == len(keys)):
            raise InvalidRequestError("keys, parents, tokens and layers must have the same length", "keys")
        if any(not all(isinstance(x, int) and 0 <= x < mc.num_hidden_layers for x in block) for block in layers):
            raise InvalidRequestError(f"layers must list layer indices in [0, {mc.num_hidden_layers})", "layers")
        rows = sum(len(block) for block in layers)
        want = (rows, self.kv.block_size, mc.num_key_value_heads, mc.head_dim)
        for name, tensor in (("k", k), ("v", v)):
            if tensor is None or tuple(tensor.shape) != want:
                got = None if tensor is None else tuple(tensor.shape)
                raise InvalidRequestError(f"{name} must have shape {want}, got {got}", name)
        assert k is not None and v is not None
        present = [tuple(set(group.layers) <= set(block) for group in self.kv.groups) for block in layers]
        writes = self.kv.import_blocks(
            [(key, p, tuple(t)) for key, p, t in zip(keys, parents, tokens, strict=True)], present
        )
        if writes:
            self._write_rows(writes, (k, v), layers)
        return len(writes)

    def _write_rows(
        self, writes: list[tuple[int, tuple[int, ...]]], rows: tuple[torch.Tensor, torch.Tensor],
        layers: list[list[int]],
    ) -> None:
        """Writes the (block, layer) rows of the blocks ``writes`` names (the payload's rows of the
        other blocks are skipped)."""
        starts = [0]
        for block in layers:
            starts.append(starts[-1] + len(block))
        picked = torch.tensor([r for i, _ in writes for r in range(starts[i], starts[i + 1])], dtype=torch.int64)
        self.executor.write_block_rows(  # type: ignore[attr-defined]
            [ids for _, ids in writes], rows[0][picked], rows[1][picked], [layers[i] for i, _ in writes]
        )

    def _control_reset_prefix_cache(self) -> int:
        return self.kv.reset_prefix_cache()

    # -- LoRA adapters (docs/lora.md) -----------------------------------------------------------

    def _start_lora(self, model: torch.nn.Module, model_name: str) -> LoRAManager:
        from edgecloud.llm.lora import LoRAManager
        from edgecloud.llm.lora.layers import attach_lora

        c = self.config
        lora = LoRAManager(self.model_config, c.max_loras, c.max_lora_rank, c.max_cpu_loras, self.dtype, self.device,
                           reserved_names=(model_name,))
        attach_lora(model, lora.slots)
        for name, path in c.lora_modules:
            try:
                lora.add(name, path)
            except InvalidRequestError as error:
                raise InvalidRequestError(f"lora_modules: {error}", "lora_modules") from None
        return lora

    def _require_lora(self) -> LoRAManager:
        if self.lora is None:
            raise InvalidRequestError("LoRA is not enabled on this engine (start it with --enable-lora)", "lora_name")
        return self.lora

    def _adapter_loaded(self, stale_name: bool) -> None:
        if stale_name:  # another adapter was known under this name: its cached blocks must not be hit
            self.kv.reset_prefix_cache()

    def _control_load_lora_adapter(self, lora_name: str, lora_path: str, pinned: bool = False) -> dict[str, Any]:
        """Reads, checks and registers a PEFT adapter directory (vLLM's ``load_lora_adapter``)."""
        lora = self._require_lora()
        adapter, stale = lora.add(lora_name, lora_path, pinned)
        self._adapter_loaded(stale)
        return {"name": adapter.name, "rank": adapter.rank, "bytes": adapter.num_bytes}

    def _control_unload_lora_adapter(self, lora_name: str) -> None:
        lora = self._require_lora()
        users = sum(1 for r in self.scheduler.requests.values() if r.adapter_id == lora_name)
        if users:
            raise InvalidRequestError(f"LoRA adapter {lora_name!r} is in use by {users} request(s); unload it when "
                                      "they finish", "lora_name")
        lora.remove(lora_name)

    def _control_list_lora_adapters(self) -> list[dict[str, Any]]:
        return [] if self.lora is None else self.lora.describe()

    def _control_pin_lora_adapter(self, lora_name: str, pinned: bool = True) -> None:
        self._require_lora().set_pinned(lora_name, pinned)

    def _control_export_lora_adapter(self, lora_name: str, transport: str = "inline") -> dict[str, Any]:
        """The adapter's config and tensors (or, ``transport="shm"``, the handle of a shared-memory
        file holding them), for a peer instance's ``import_lora_adapter``."""
        return self._require_lora().export(lora_name, transport)

    def _control_import_lora_adapter(
        self, lora_name: str, config: dict[str, Any], digest: str, tensors: dict[str, torch.Tensor] | None = None,
        pinned: bool = False, shm: dict[str, Any] | None = None,
    ) -> None:
        self._adapter_loaded(self._require_lora().import_(lora_name, config, tensors, digest, pinned, shm))

    # -- mixture of experts (docs/moe.md) -------------------------------------------------------

    def _expert_runtime(self) -> Any:
        runtime = getattr(self.executor, "moe", None)
        if runtime is None:
            raise InvalidRequestError(f"{self.info.model_name} has no mixture-of-experts layers", "op")
        return runtime

    def _control_expert_load(self, reset: bool = False) -> dict[str, Any]:
        """Routing counters per MoE layer: top-k choices per expert, tokens per EP rank and their
        max / mean, the live placement; ``reset`` zeroes the counters after reading them."""
        return self._expert_runtime().load(reset)

    def _control_expert_placement(self, slot_expert: list[list[int]], live: bool = True) -> int:
        """Moves experts to a new placement (``slot_expert[moe layer][physical slot]``, -1 = empty), a
        layer per step when ``live`` (serving goes on), else before the next step. Returns how many
        layers change."""
        from edgecloud.llm.moe.placement import Placement

        runtime = self._expert_runtime()
        try:
            placement = Placement(slot_expert, runtime.world_size, runtime.moe.num_experts)
            return runtime.apply(placement, live=live)
        except ValueError as error:
            raise InvalidRequestError(str(error), "slot_expert") from None


def validate_core_request(req: EngineCoreRequest, info: EngineInfo) -> None:
    """What any front end can check before a request reaches the core (and the core checks again)."""
    ids = req.prompt_token_ids
    if not ids:
        raise InvalidRequestError("prompt must not be empty", "prompt")
    if any(not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < info.vocab_size for t in ids):
        raise InvalidRequestError(f"prompt token ids must be integers in [0, {info.vocab_size})", "prompt")
    if len(ids) >= info.max_model_len:
        raise InvalidRequestError(
            f"prompt has {len(ids)} tokens; this model's context is {info.max_model_len} "
            f"(prompt must be shorter to leave room for output)",
            "prompt",
        )
    blocks = -(-(len(ids) + 1) // info.block_size)
    if blocks > info.num_blocks:
        raise InvalidRequestError(
            f"prompt needs {blocks} KV blocks but the cache has {info.num_blocks} (raise kv_cache_memory_mb)",
            "prompt",
        )
    if req.params.structured_outputs is not None:
        req.params.structured_outputs.check()
    bias = req.params.logit_bias
    if bias and any(t >= info.vocab_size for t in bias):
        raise InvalidRequestError(f"logit_bias keys must be token ids in [0, {info.vocab_size})", "logit_bias")
