"""Perplexity of an engine's model on a text: the quality cost of a weight format.

The text is cut into consecutive windows of ``window`` tokens, and every token after a window's
first is scored. Perplexity is ``exp(mean negative log-likelihood)`` over all scored tokens. Each
window runs through the engine's own model (the same layers, attention and KV writes a request
uses) one of three ways (``path``):

- ``prefill``: as one prefill chunk, with logits for every position;
- ``modules``: one token a step, as decoding does (the paged decode backend; an int4 model's
  products then take the one-row C kernel with activations rounded to int8, not prefill's kernel);
- ``stack``: one token a step through the one-call decoder (``decode_stack.py``) where the model
  allows it (else ``modules``).
"""

from __future__ import annotations

import math

import torch

from edgecloud.llm.attention.backend import DecodeBatch
from edgecloud.llm.attention.paged import PagedDecodeAttention
from edgecloud.llm.attention.prefill import make_prefill_segment
from edgecloud.llm.model_runner import ModelRunner
from edgecloud.llm.step_context import AttentionMetadata, StepContext

PATHS = ("prefill", "modules", "stack")


@torch.inference_mode()
def perplexity(runner: ModelRunner, token_ids: list[int], window: int = 256, path: str = "prefill") -> float:
    """Runs on KV tensors of its own (bound to the layers for the call), so the engine's cache and
    the requests in it are untouched."""
    if window < 2 or len(token_ids) < 2:
        raise ValueError(f"need window >= 2 and >= 2 tokens, got window={window}, {len(token_ids)} tokens")
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    layers = [layer.self_attn for layer in runner.model.model.layers]
    rotary = getattr(layers[0], "rotary", None)
    positions = rotary.cos.shape[0] if rotary is not None else window
    if window > positions:
        raise ValueError(f"window={window} is longer than the {positions} positions this engine was built for "
                         f"(its max_model_len): use a shorter window or a longer max_model_len")
    own = [(torch.empty((window, *k.shape[2:]), dtype=k.dtype, device=k.device).unsqueeze(1),
            torch.empty((window, *v.shape[2:]), dtype=v.dtype, device=v.device).unsqueeze(1))
           for k, v in runner.kv_caches]
    try:
        for attn, cache in zip(layers, own, strict=True):
            attn.kv_cache = cache
        if path == "prefill":
            return _perplexity(runner, token_ids, window)
        return _one_token_perplexity(runner, token_ids, window, path == "stack")
    finally:
        for attn, cache in zip(layers, runner.kv_caches, strict=True):
            attn.kv_cache = cache


def _perplexity(runner: ModelRunner, token_ids: list[int], window: int) -> float:
    device = runner.device
    nll, scored = 0.0, 0
    for start in range(0, len(token_ids) - 1, window):
        chunk = token_ids[start : start + window]
        if len(chunk) < 2:
            break
        n = len(chunk)
        slots = torch.arange(n, dtype=torch.int64, device=device)
        meta = AttentionMetadata(slot_mapping=slots, num_prefill_tokens=n,
                                 prefill=[make_prefill_segment(0, n, slots)], decode_backend=None, decode_plan=None)
        ctx = StepContext(attention=[meta] * len(runner.groups), layer_group=runner.layer_group)
        ids = torch.tensor(chunk, dtype=torch.int64, device=device)
        logits = runner.model(ids, slots, ctx, slots[:-1])
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        nll -= float(logprobs.gather(1, ids[1:, None]).sum())
        scored += n - 1
    return math.exp(nll / scored)


def _one_token_perplexity(runner: ModelRunner, token_ids: list[int], window: int, stack: bool) -> float:
    """Each window token by token: its own cache has blocks of one token, block ``i`` = position ``i``."""
    from edgecloud.llm.quant import decode_stack

    device = runner.device
    one_call = None
    if stack and decode_stack.unsupported(runner.model) is None:
        one_call = decode_stack.DecodeStack(runner.model, runner.layer_group, block_size=1)
    backend = PagedDecodeAttention()
    nll, scored = 0.0, 0
    for start in range(0, len(token_ids) - 1, window):
        chunk = token_ids[start : start + window]
        for i in range(len(chunk) - 1):
            slot = torch.tensor([i], dtype=torch.int64, device=device)
            plan = backend.plan(DecodeBatch(block_tables=[list(range(i + 1))], context_lens=[i + 1], block_size=1,
                                            device=device))
            meta = AttentionMetadata(slot_mapping=slot, num_prefill_tokens=0, prefill=[], decode_backend=backend,
                                     decode_plan=plan)
            ctx = StepContext(attention=[meta] * len(runner.groups), layer_group=runner.layer_group,
                              decode_stack=one_call)
            logits = runner.model(torch.tensor([chunk[i]], dtype=torch.int64, device=device), slot, ctx,
                                  torch.zeros(1, dtype=torch.int64, device=device))
            nll -= float(torch.log_softmax(logits.float(), dim=-1)[0, chunk[i + 1]])
            scored += 1
    return math.exp(nll / scored)
