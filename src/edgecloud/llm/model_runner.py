"""Runs the model for one scheduled step: builds the flattened inputs, the slot mapping and the
attention context from the block tables, owns the KV cache tensors, returns logits."""

from __future__ import annotations

import torch

from edgecloud.llm.attention import DecodeAttentionBackend, DecodeBatch
from edgecloud.llm.attention.prefill import StepAttention, make_prefill_segment
from edgecloud.llm.config import ModelConfig
from edgecloud.llm.scheduler import ScheduledSeq


def kv_bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    element = torch.tensor([], dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * block_size * config.num_key_value_heads * config.head_dim * element


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        config: ModelConfig,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        decode_backend: DecodeAttentionBackend,
    ) -> None:
        self.model = model
        self.config = config
        self.block_size = block_size
        self.device = device
        self.decode_backend = decode_backend
        shape = (num_blocks, block_size, config.num_key_value_heads, config.head_dim)
        self.kv_caches = [
            (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(config.num_hidden_layers)
        ]

    def _slots(self, block_table: list[int], start: int, end: int) -> list[int]:
        bs = self.block_size
        return [block_table[p // bs] * bs + p % bs for p in range(start, end)]

    @torch.inference_mode()
    def run(self, scheduled: list[ScheduledSeq]) -> tuple[torch.Tensor, list[ScheduledSeq]]:
        """Executes the step. Returns logits ``[num_sampling, vocab]`` and the sequences they
        belong to, in that row order (prefill chunks first, then decodes)."""
        prefills = [s for s in scheduled if s.num_new_tokens > 1]
        decodes = [s for s in scheduled if s.num_new_tokens == 1]
        input_ids: list[int] = []
        positions: list[int] = []
        slot_mapping: list[int] = []
        segments = []
        logits_rows: list[int] = []
        order: list[ScheduledSeq] = []
        for s in prefills:
            seq, start = s.seq, s.seq.num_computed_tokens
            end = start + s.num_new_tokens
            query_start = len(input_ids)
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            context = torch.tensor(self._slots(seq.block_table, 0, end), dtype=torch.int64, device=self.device)
            slot_mapping.extend(context[start:end].tolist())
            segments.append(make_prefill_segment(query_start, s.num_new_tokens, context))
            if s.samples:
                logits_rows.append(len(input_ids) - 1)
                order.append(s)
        num_prefill_tokens = len(input_ids)
        decode_plan = None
        if decodes:
            for s in decodes:
                seq, pos = s.seq, s.seq.num_computed_tokens
                input_ids.append(seq.token_ids[pos])
                positions.append(pos)
                slot_mapping.append(self._slots(seq.block_table, pos, pos + 1)[0])
                if s.samples:
                    logits_rows.append(len(input_ids) - 1)
                    order.append(s)
            batch = DecodeBatch(
                block_tables=[s.seq.block_table for s in decodes],
                context_lens=[s.seq.num_computed_tokens + 1 for s in decodes],
                block_size=self.block_size,
                device=self.device,
            )
            decode_plan = self.decode_backend.plan(batch)
        step = StepAttention(
            slot_mapping=torch.tensor(slot_mapping, dtype=torch.int64, device=self.device),
            num_prefill_tokens=num_prefill_tokens,
            prefill=segments,
            decode_backend=self.decode_backend if decodes else None,
            decode_plan=decode_plan,
        )
        logits = self.model(
            torch.tensor(input_ids, dtype=torch.int64, device=self.device),
            torch.tensor(positions, dtype=torch.int64, device=self.device),
            self.kv_caches,
            step,
            torch.tensor(logits_rows, dtype=torch.int64, device=self.device),
        )
        return logits, order

    @torch.inference_mode()
    def copy_block(self, src: int, dst: int) -> None:
        for k_cache, v_cache in self.kv_caches:
            k_cache[dst].copy_(k_cache[src])
            v_cache[dst].copy_(v_cache[src])

    @torch.inference_mode()
    def read_kv(self, block_table: list[int], num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``num_tokens`` tokens' K and V: ``[num_layers, num_tokens, kv_heads, head_dim]``."""
        slots = torch.tensor(self._slots(block_table, 0, num_tokens), dtype=torch.int64, device=self.device)
        shape = (-1, self.config.num_key_value_heads, self.config.head_dim)
        keys = torch.stack([k.view(shape)[slots] for k, _ in self.kv_caches]).cpu()
        values = torch.stack([v.view(shape)[slots] for _, v in self.kv_caches]).cpu()
        return keys, values

    @torch.inference_mode()
    def write_kv(self, block_table: list[int], keys: torch.Tensor, values: torch.Tensor) -> None:
        slots = torch.tensor(self._slots(block_table, 0, keys.shape[1]), dtype=torch.int64, device=self.device)
        shape = (-1, self.config.num_key_value_heads, self.config.head_dim)
        for layer, (k_cache, v_cache) in enumerate(self.kv_caches):
            k_cache.view(shape).index_copy_(0, slots, keys[layer].to(k_cache))
            v_cache.view(shape).index_copy_(0, slots, values[layer].to(v_cache))
