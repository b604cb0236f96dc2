"""Scores a KV layer pattern on token sequences, with the engine's own model code.

Every pattern prefills with full attention (OmniAttn: "prefill full, decode compressed"), so a
sequence's prefix is prefilled once and its KV kept; a pattern then changes only what the tokens
after the prefix see. Those tokens are run teacher-forced, in one chunk, with the mask that the
engine's runner gives tokens past the prompt on compressed layers
(``attention/sink_window.py``): each sees exactly what it would see if it had been decoded one at
a time under the pattern (tests check this against the engine's decode path and against
transformers with per-layer masks). Greedy generation (the needle test) decodes one token at a
time the same way.

The evaluator binds its own KV tensors (one contiguous block table per sequence) to the model's
attention layers; it does not use the engine's scheduler or pools, so any number of patterns can
be scored against the same prefill.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from edgecloud.llm.attention.prefill import PrefillSegment, make_prefill_segment
from edgecloud.llm.attention.sink_window import sink_window_mask
from edgecloud.llm.config import ModelConfig
from edgecloud.llm.model_source import ModelSource
from edgecloud.llm.omniattn.pattern import LayerPattern
from edgecloud.llm.step_context import AttentionMetadata, StepContext
from edgecloud.llm.tokenizer import Tokenizer

PREFILL_CHUNK = 1024  # tokens per prefill forward (the engine chunks prefill alike)


@dataclass
class PrefilledSequence:
    """A token sequence whose first ``prefix_len`` tokens are prefilled (full attention).
    ``kv[layer]`` holds the prefill's KV at slots ``0 .. prefix_len`` and room for ``scratch``
    more tokens after it, where continuations and generated tokens are written (so the prefill is
    never overwritten and serves every pattern and every shorter context). ``last_logits``
    predicts token ``prefix_len``."""

    token_ids: list[int]
    prefix_len: int
    scratch: int
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    last_logits: torch.Tensor


class PatternEvaluator:
    def __init__(
        self, model: torch.nn.Module, config: ModelConfig, block_size: int, device: torch.device,
        fingerprint: bytes = b"",
    ) -> None:
        """``fingerprint`` identifies the model's weights for the prefill cache."""
        self.model = model
        self.fingerprint = fingerprint
        self.config = config
        self.block_size = block_size
        self.device = device
        self.dtype = next(model.parameters()).dtype
        self.tokens_run = 0  # tokens through the model, prefill included: the evaluation's cost

    @torch.inference_mode()
    def _forward(
        self, seq: PrefilledSequence, start: int, first: int, end: int, pattern: LayerPattern | None,
        num_prompt_tokens: int, logits_rows: torch.Tensor,
    ) -> torch.Tensor:
        """Runs the tokens at positions ``first .. end - 1`` of a context whose positions before
        ``start`` (<= ``prefix_len``) are the prefill's and the rest continue it in the scratch
        slots (position ``p >= start`` at slot ``prefix_len + p - start``). Full layers attend
        causally; compressed layers of ``pattern`` as the engine's runner masks them (tokens from
        ``num_prompt_tokens`` on see only their sink and window)."""
        for layer, cache in zip(self.model.model.layers, seq.kv, strict=True):
            layer.self_attn.kv_cache = cache
        positions = torch.arange(end)
        slots = torch.where(positions < start, positions, seq.prefix_len + positions - start).to(self.device)
        rows = end - first
        attention = [AttentionMetadata(slots[first:], rows, [make_prefill_segment(0, rows, slots)], None, None)]
        layer_group = (0,) * self.config.num_hidden_layers
        if pattern is not None and pattern.compressed:
            mask = sink_window_mask(positions[first:], positions, num_prompt_tokens, pattern.sink_blocks,
                                    pattern.window_blocks, pattern.block_size).to(self.device)
            attention.append(AttentionMetadata(slots[first:], rows, [PrefillSegment(0, rows, slots, mask)], None, None))
            layer_group = tuple(int(i in pattern.compressed) for i in range(self.config.num_hidden_layers))
        ids = torch.tensor(seq.token_ids[first:end], dtype=torch.int64, device=self.device)
        self.tokens_run += rows
        return self.model(ids, positions[first:].to(self.device), StepContext(attention, layer_group),
                          logits_rows.to(self.device))

    # -- sequences --------------------------------------------------------------------------------

    def _empty(self, token_ids: list[int], prefix_len: int, scratch: int) -> PrefilledSequence:
        blocks = -(-(prefix_len + scratch) // self.block_size)
        shape = (blocks, self.block_size, self.config.num_key_value_heads, self.config.head_dim)
        kv = [(torch.zeros(shape, dtype=self.dtype, device=self.device),
               torch.zeros(shape, dtype=self.dtype, device=self.device)) for _ in range(self.config.num_hidden_layers)]
        return PrefilledSequence(list(token_ids), prefix_len, scratch, kv, torch.empty(0))

    def prefill(
        self, token_ids: list[int], prefix_len: int, scratch: int = 0, cache_dir: Path | None = None
    ) -> PrefilledSequence:
        """Prefills ``token_ids[:prefix_len]`` with full attention, in chunks as the engine does,
        leaving room for ``scratch`` tokens of continuation or generation. With ``cache_dir``, the
        prefill's KV is kept there under a hash of the model and the tokens, and read back next time
        (an 8k-token prefill takes minutes on a loaded CPU)."""
        seq = self._empty(token_ids, prefix_len, scratch)
        path = None
        if cache_dir is not None:
            digest = hashlib.sha256(self.fingerprint + struct.pack(f"<{prefix_len}I", *token_ids[:prefix_len]))
            path = cache_dir / f"prefill-{digest.hexdigest()[:24]}.pt"
            if path.exists():
                saved = torch.load(path)
                used = saved["k"].shape[1]
                for layer, (k, v) in enumerate(seq.kv):
                    k[:used].copy_(saved["k"][layer])
                    v[:used].copy_(saved["v"][layer])
                seq.last_logits = saved["last_logits"]
                return seq
        for start in range(0, prefix_len, PREFILL_CHUNK):
            end = min(start + PREFILL_CHUNK, prefix_len)
            logits = self._forward(seq, prefix_len, start, end, None, prefix_len, torch.tensor([end - start - 1]))
        seq.last_logits = logits[0]
        if path is not None:
            used = -(-prefix_len // self.block_size)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"k": torch.stack([k[:used] for k, _ in seq.kv]),
                        "v": torch.stack([v[:used] for _, v in seq.kv]), "last_logits": seq.last_logits}, path)
        return seq

    def continuation_logprobs(
        self, seq: PrefilledSequence, pattern: LayerPattern | None, start: int | None = None, end: int | None = None
    ) -> torch.Tensor:
        """Log-probabilities of tokens ``start + 1 .. end - 1`` (default: ``prefix_len + 1`` to the
        sequence's end) under ``pattern`` (None: full KV), teacher-forced after a prompt of
        ``start <= prefix_len`` tokens: each token is predicted as decoding would predict it."""
        start = seq.prefix_len if start is None else start
        end = len(seq.token_ids) if end is None else end
        if not 0 < start <= seq.prefix_len or end - start < 2 or end - start - 1 > seq.scratch:
            raise ValueError(
                f"continuation [{start}, {end}) does not fit prefix {seq.prefix_len} + scratch {seq.scratch}"
            )
        logits = self._forward(seq, start, start, end - 1, pattern, start, torch.arange(end - 1 - start))
        targets = torch.tensor(seq.token_ids[start + 1 : end], device=logits.device)
        return torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0].cpu()

    def greedy(self, seq: PrefilledSequence, pattern: LayerPattern | None, max_tokens: int) -> list[int]:
        """Greedy tokens after the prefix: the first from the (full) prefill, the rest decoded one
        at a time under ``pattern``."""
        if max_tokens - 1 > seq.scratch:
            raise ValueError(f"scratch {seq.scratch} is too small for {max_tokens} generated tokens")
        tokens = seq.token_ids
        seq.token_ids = tokens[: seq.prefix_len]
        out = [int(seq.last_logits.argmax())]
        try:
            while len(out) < max_tokens:
                seq.token_ids.append(out[-1])
                position = len(seq.token_ids) - 1
                logits = self._forward(seq, seq.prefix_len, position, position + 1, pattern, seq.prefix_len,
                                       torch.tensor([0]))
                out.append(int(logits[0].argmax()))
        finally:
            seq.token_ids = tokens
        return out


def load_evaluator(
    model: str | None, block_size: int = 16, device: str = "cpu", dtype: str = "auto"
) -> tuple[PatternEvaluator, Tokenizer, ModelSource]:
    """The engine's model for ``model`` (as ``--model`` names it: None is the default model) in an
    evaluator, with its tokenizer and where it came from."""
    from edgecloud.llm.config import EngineConfig
    from edgecloud.llm.engine_core import max_model_len_for
    from edgecloud.llm.kv_cache import model_fingerprint
    from edgecloud.llm.loader import load_model
    from edgecloud.llm.model_source import resolve_model

    config = EngineConfig(model=model, dtype=dtype, device=device, block_size=block_size)
    source = resolve_model(model)
    mc = ModelConfig.from_file(source.directory / "config.json")
    torch_device = torch.device(device)
    torch_dtype = config.resolve_dtype(mc)
    net = load_model(source.directory, mc, torch_dtype, torch_device, max_model_len_for(config, mc))
    fingerprint = model_fingerprint(source.directory, str(torch_dtype))
    return PatternEvaluator(net, mc, block_size, torch_device, fingerprint), Tokenizer(source.directory), source
