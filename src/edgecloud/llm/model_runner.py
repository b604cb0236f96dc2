"""The engine's executor: runs the model for one scheduled step and samples.

Builds the flattened inputs, each layer group's slot mapping and attention metadata from the
block tables, the ``StepContext`` every module receives, runs the forward pass, and samples the
next token of each request that reached its last token. Owns the KV cache tensors (each layer's
sized by its group's pool), and reads and writes whole blocks for export and import.

An OmniAttn-compressed group (``sink_window``) decodes through the paged backend over the blocks
it holds (sink + window), and prefills with a mask where it holds fewer keys than the context
(``attention/sink_window.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from edgecloud.llm.attention import make_decode_backend
from edgecloud.llm.attention.backend import DecodeBatch
from edgecloud.llm.attention.paged import PagedDecodeAttention
from edgecloud.llm.attention.prefill import PrefillSegment, make_prefill_segment
from edgecloud.llm.attention.sink_window import sink_window_mask
from edgecloud.llm.config import ModelConfig
from edgecloud.llm.kv_cache import LayerGroup, hugepages
from edgecloud.llm.layers.attention import kv_cache_shape
from edgecloud.llm.moe.runtime import ExpertRuntime
from edgecloud.llm.request_state import Request
from edgecloud.llm.sampler import Sampler, SampleRow
from edgecloud.llm.scheduler import SampledTokens, ScheduledRequest, SchedulerOutput
from edgecloud.llm.step_context import AttentionMetadata, StepContext
from edgecloud.llm.structured import StructuredOutputs, single_token_bitmask

if TYPE_CHECKING:
    from edgecloud.llm.lora import LoRAManager
    from edgecloud.llm.quant.decode_stack import DecodeStack


def _adapter_order(s: ScheduledRequest) -> str:
    return s.request.adapter_id or ""


def kv_bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """Bytes one block holds over all layers (K and V, in the shapes the attention modules declare)."""
    element = torch.tensor([], dtype=dtype).element_size()
    per_token = sum(math.prod(k) + math.prod(v) for k, v in
                    (kv_cache_shape(config, layer) for layer in range(config.num_hidden_layers)))
    return block_size * per_token * element


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        config: ModelConfig,
        groups: list[LayerGroup],
        num_blocks: int | Sequence[int],
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        attention_backend: str,
        seed: int,
        lora: LoRAManager | None = None,
        structured: StructuredOutputs | None = None,
    ) -> None:
        self.model = model
        self.lora = lora
        self.structured = structured
        self.config = config
        self.groups = groups
        self.block_size = block_size
        self.device = device
        self.dtype = dtype
        # a compressed group's tables are a few blocks with nothing shared in the middle: paged
        self.decode_backends = [
            PagedDecodeAttention() if group.compressed else make_decode_backend(attention_backend) for group in groups
        ]
        self.sampler = Sampler(seed)
        layer_group = [0] * config.num_hidden_layers
        for g, group in enumerate(groups):
            for layer in group.layers:
                layer_group[layer] = g
        self.layer_group = tuple(layer_group)
        sizes = [num_blocks] * len(groups) if isinstance(num_blocks, int) else list(num_blocks)
        self.kv_caches = []
        for layer in range(config.num_hidden_layers):
            k_shape, v_shape = kv_cache_shape(config, layer)
            blocks = sizes[self.layer_group[layer]]
            self.kv_caches.append((
                hugepages.zeros((blocks, block_size, *k_shape), dtype=dtype, device=device),
                hugepages.zeros((blocks, block_size, *v_shape), dtype=dtype, device=device),
            ))
        for layer, cache in zip(model.model.layers, self.kv_caches, strict=True):
            layer.self_attn.kv_cache = cache
        # Mixture-of-experts state (expert maps, routing counters, migration), in ``ctx.moe``.
        self.moe = ExpertRuntime(model, config, device) if config.moe is not None else None
        # Set by the engine core around a step it may abandon between layers (only flex work in it).
        self.interrupt: Callable[[], bool] | None = None
        # One-token steps of an int4 or float32 Llama run their layers in one C call (llm/quant/decode_stack.py);
        # made at the first such step (a model may be quantized after the runner is built).
        self._stack: DecodeStack | None = None
        self._stack_unsupported: tuple[object, str] | None = None  # (model's lm_head, why) when it cannot

    def _slots(self, block_table: list[int], start: int, end: int) -> np.ndarray:
        positions = np.arange(start, end)
        return np.asarray(block_table, dtype=np.int64)[positions // self.block_size] * self.block_size + (
            positions % self.block_size
        )

    def _attention(
        self, g: int, prefills: list[ScheduledRequest], decodes: list[ScheduledRequest]
    ) -> AttentionMetadata:
        slot_parts: list[np.ndarray] = []
        segments = []
        query_start = 0
        for s in prefills:
            req, start = s.request, s.request.num_computed_tokens
            end = start + s.num_new_tokens
            segment = self._sink_window_segment(g, req, start, end, query_start)
            if segment is None:
                context = self._slots(req.block_tables[g], 0, end)
                segment = make_prefill_segment(query_start, s.num_new_tokens, torch.from_numpy(context).to(self.device))
                slot_parts.append(context[start:end])
            else:
                slot_parts.append(self._slots(req.block_tables[g], start, end))
            segments.append(segment)
            query_start += s.num_new_tokens
        decode_plan = None
        backend = None
        if decodes:
            for s in decodes:
                pos = s.request.num_computed_tokens
                slot_parts.append(self._slots(s.request.block_tables[g], pos, pos + 1))
            backend = self.decode_backends[g]
            tables = [s.request.block_tables[g] for s in decodes]
            lens = [s.request.num_computed_tokens + 1 for s in decodes]
            if self.groups[g].compressed:
                # the held blocks (sink + window) in order; all full but the one being written
                tables = [[b for b in table if b >= 0] for table in tables]
                lens = [(len(table) - 1) * self.block_size + (n - 1) % self.block_size + 1
                        for table, n in zip(tables, lens, strict=True)]
            decode_plan = backend.plan(DecodeBatch(
                block_tables=tables, context_lens=lens, block_size=self.block_size, device=self.device,
            ))
        slots = np.concatenate(slot_parts) if slot_parts else np.zeros(0, dtype=np.int64)
        return AttentionMetadata(
            slot_mapping=torch.from_numpy(slots).to(self.device),
            num_prefill_tokens=query_start,
            prefill=segments,
            decode_backend=backend,
            decode_plan=decode_plan,
        )

    def _sink_window_segment(
        self, g: int, req: Request, start: int, end: int, query_start: int
    ) -> PrefillSegment | None:
        """A compressed group's prefill chunk, masked to the keys the group holds and, for tokens
        past the prompt, to their sink and window; None where that is the plain causal chunk."""
        group = self.groups[g]
        if not group.compressed:
            return None
        bs = self.block_size
        table = np.asarray(req.block_tables[g][: (end - 1) // bs + 1], dtype=np.int64)
        if end <= req.num_prompt_tokens and (table >= 0).all():
            return None
        held = np.flatnonzero(table >= 0)
        key_positions = (held[:, None] * bs + np.arange(bs)).ravel()
        key_positions = key_positions[key_positions < end]
        slots = table[key_positions // bs] * bs + key_positions % bs
        mask = sink_window_mask(
            torch.arange(start, end), torch.from_numpy(key_positions), req.num_prompt_tokens, group.sink_blocks,
            group.window_blocks, bs,
        )
        return PrefillSegment(query_start, end - start, torch.from_numpy(slots).to(self.device), mask.to(self.device))

    @torch.inference_mode()
    def execute(self, plan: SchedulerOutput) -> SampledTokens:
        """Runs the step and samples. Row order inside the batch: prefill chunks, then decodes."""
        if not plan.scheduled:
            return SampledTokens()
        prefills = [s for s in plan.scheduled if s.num_new_tokens > 1]
        decodes = [s for s in plan.scheduled if s.num_new_tokens == 1]
        with_adapters = self.lora is not None and any(s.request.adapter_id for s in plan.scheduled)
        if with_adapters:  # rows of one adapter side by side: one LoRA segment each (docs/lora.md)
            prefills.sort(key=_adapter_order)
            decodes.sort(key=_adapter_order)
        input_ids: list[int] = []
        positions: list[int] = []
        logits_rows: list[int] = []
        sampling: list[Request] = []
        for s in (*prefills, *decodes):
            req, start = s.request, s.request.num_computed_tokens
            input_ids.extend(req.all_token_ids[start : start + s.num_new_tokens])
            positions.extend(range(start, start + s.num_new_tokens))
            if s.samples:
                logits_rows.append(len(input_ids) - 1)
                sampling.append(req)
        ctx = StepContext(
            attention=[self._attention(g, prefills, decodes) for g in range(len(self.groups))],
            layer_group=self.layer_group,
            moe=None if self.moe is None else self.moe.begin_step(),
            # MoE counters and LoRA slots are per-step state a dropped step would leave half done
            interrupt=self.interrupt if self.moe is None and not with_adapters else None,
        )
        if with_adapters:
            assert self.lora is not None
            ctx.lora = self.lora.batch(
                [s.request.adapter_id for s in (*prefills, *decodes) for _ in range(s.num_new_tokens)]
            )
        if self.lora is not None:
            self.lora.slots.batch = ctx.lora  # what the LoRA layers apply in this forward pass
        if len(input_ids) == 1 and not prefills:
            ctx.decode_stack = self._decode_stack(ctx)
        logits = self.model(
            torch.tensor(input_ids, dtype=torch.int64, device=self.device),
            torch.tensor(positions, dtype=torch.int64, device=self.device),
            ctx,
            torch.tensor(logits_rows, dtype=torch.int64, device=self.device),
        )
        if not sampling:
            return SampledTokens()
        rows = [SampleRow(r.params, self._generator(r), r.prompt_token_ids, r.output_token_ids) for r in sampling]
        constrained = [i for i, r in enumerate(sampling) if r.params.structured_outputs is not None]
        raw_logits, budgets = logits, []
        if constrained:  # each answer stays closable within the tokens it has left (llm/structured.py)
            budgets = [sampling[i].params.max_tokens - sampling[i].num_output_tokens for i in constrained]
            masks = self._structured().bitmask([self._grammar(sampling[i]) for i in constrained], budgets)
            for row, i in enumerate(constrained):
                rows[i].token_bitmask = masks[row]
            raw_logits = logits.clone()  # the sampler masks in place; a forced token is drawn again
        tokens, logprobs = self.sampler(logits, rows)
        for row, i in enumerate(constrained):
            forced = self._structured().accept(sampling[i].grammar, tokens[i], budgets[row])
            if forced is not None:
                rows[i].token_bitmask = single_token_bitmask(forced, self._structured().vocab_size)
                _, again = self.sampler(raw_logits[i : i + 1], [rows[i]])
                tokens[i], logprobs[i] = forced, again[0]
        result = SampledTokens()
        for req, token, logprob in zip(sampling, tokens, logprobs, strict=True):
            result.token_ids[req.request_id] = token
            if logprob is not None:
                result.logprobs[req.request_id] = logprob
        return result

    def _decode_stack(self, ctx: StepContext) -> DecodeStack | None:
        """The one-call decoder for this one-token step, or None (the module path)."""
        if self._stack is not None and not self._stack.current():
            self._stack = None
        if self._stack is None:
            head = getattr(self.model, "lm_head", None)
            if self._stack_unsupported is not None and self._stack_unsupported[0] is head:
                return None  # this model was found unsupported (re-checked if its modules are replaced)
            from edgecloud.llm.quant import decode_stack

            reason = decode_stack.unsupported(self.model)
            if reason is not None:
                self._stack_unsupported = (head, reason)
                return None
            self._stack = decode_stack.DecodeStack(self.model, self.layer_group, self.block_size)
        return self._stack if self._stack.takes(ctx) else None

    def _structured(self) -> StructuredOutputs:
        if self.structured is None:
            raise RuntimeError("this engine was built without a structured-output backend")
        return self.structured

    def _grammar(self, req: Request) -> object:
        """The request's grammar state (``structured.GrammarState``), made when the core admitted it
        or on its first sampled token, and advanced with each."""
        if req.grammar is None:
            assert req.params.structured_outputs is not None
            req.grammar = self._structured().start(req.params.structured_outputs)
        return req.grammar

    @staticmethod
    def _generator(req: Request) -> torch.Generator | None:
        """A seeded request draws its noise from its own generator, so its tokens do not depend
        on what else is batched; the i-th of n samples gets its own stream."""
        if req.params.seed is None:
            return None
        if req.generator is None:
            seed = hash((req.params.seed, req.sample_index)) & 0x7FFF_FFFF_FFFF_FFFF  # ints hash alike everywhere
            req.generator = torch.Generator().manual_seed(seed)
        return req.generator

    def _block_index(self, block_ids: list[tuple[int, ...]], layer: int) -> torch.Tensor:
        group = self.layer_group[layer]
        return torch.tensor([ids[group] for ids in block_ids], dtype=torch.int64, device=self.device)

    @torch.inference_mode()
    def read_blocks(self, block_ids: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of whole blocks (``block_ids[i][g]``: block ``i`` in group ``g``):
        ``[num_blocks, num_layers, block_size, kv_heads, head_dim]`` each, on the CPU."""
        keys, values = [], []
        for layer, (k_cache, v_cache) in enumerate(self.kv_caches):
            index = self._block_index(block_ids, layer)
            keys.append(k_cache.index_select(0, index))
            values.append(v_cache.index_select(0, index))
        return torch.stack(keys, dim=1).cpu(), torch.stack(values, dim=1).cpu()

    @torch.inference_mode()
    def write_blocks(self, block_ids: list[tuple[int, ...]], keys: torch.Tensor, values: torch.Tensor) -> None:
        """The inverse of ``read_blocks``."""
        for layer, (k_cache, v_cache) in enumerate(self.kv_caches):
            index = self._block_index(block_ids, layer)
            k_cache.index_copy_(0, index, keys[:, layer].to(k_cache))
            v_cache.index_copy_(0, index, values[:, layer].to(v_cache))

    def _rows(self, layers: list[list[int]]) -> dict[tuple[int, int], int]:
        """Row of (block, layer) when blocks carry the layers ``layers[i]``, block by block."""
        rows: dict[tuple[int, int], int] = {}
        for i, block_layers in enumerate(layers):
            for layer in block_layers:
                rows[(i, layer)] = len(rows)
        return rows

    def _per_layer(
        self, block_ids: list[tuple[int, ...]], rows: dict[tuple[int, int], int]
    ) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
        """Per layer: the rows that a held block (``block_ids[i][g] >= 0``) has, and those blocks."""
        plan = []
        for layer in range(len(self.kv_caches)):
            group = self.layer_group[layer]
            pairs = [(rows[(i, layer)], ids[group]) for i, ids in enumerate(block_ids)
                     if ids[group] >= 0 and (i, layer) in rows]
            if pairs:
                row_index = torch.tensor([r for r, _ in pairs], dtype=torch.int64)
                blocks = torch.tensor([b for _, b in pairs], dtype=torch.int64, device=self.device)
                plan.append((layer, row_index, blocks))
        return plan

    @torch.inference_mode()
    def read_block_rows(
        self, block_ids: list[tuple[int, ...]]
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """K and V of the layers of each block's held groups (``-1``: not sent for that group):
        ``[rows, block_size, kv_heads, head_dim]`` each on the CPU, rows block by block with layers
        ascending, and each block's layers."""
        layers = [[layer for layer, group in enumerate(self.layer_group) if ids[group] >= 0] for ids in block_ids]
        rows = self._rows(layers)
        shape = (len(rows), *self.kv_caches[0][0].shape[1:])
        keys, values = torch.empty(shape, dtype=self.dtype), torch.empty(shape, dtype=self.dtype)
        for layer, row_index, index in self._per_layer(block_ids, rows):
            k_cache, v_cache = self.kv_caches[layer]
            keys.index_copy_(0, row_index, k_cache.index_select(0, index).cpu())
            values.index_copy_(0, row_index, v_cache.index_select(0, index).cpu())
        return keys, values, layers

    @torch.inference_mode()
    def write_block_rows(
        self, block_ids: list[tuple[int, ...]], keys: torch.Tensor, values: torch.Tensor, layers: list[list[int]]
    ) -> None:
        """Writes rows laid out as ``read_block_rows`` returns them (``layers[i]``: the layers block
        ``i`` brings) into the groups where ``block_ids[i][g] >= 0``."""
        for layer, row_index, index in self._per_layer(block_ids, self._rows(layers)):
            k_cache, v_cache = self.kv_caches[layer]
            k_cache.index_copy_(0, index, keys.index_select(0, row_index.to(keys.device)).to(k_cache))
            v_cache.index_copy_(0, index, values.index_select(0, row_index.to(values.device)).to(v_cache))
