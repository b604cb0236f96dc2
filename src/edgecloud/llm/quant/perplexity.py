"""Perplexity of an engine's model on a text: the quality cost of a weight format.

The text is cut into consecutive windows of ``window`` tokens; each window runs as one prefill
chunk through the engine's own model (the same layers, attention and KV writes a request uses),
with logits for every position, and every token after a window's first is scored. Perplexity is
``exp(mean negative log-likelihood)`` over all scored tokens.
"""

from __future__ import annotations

import math

import torch

from edgecloud.llm.attention.prefill import make_prefill_segment
from edgecloud.llm.model_runner import ModelRunner
from edgecloud.llm.step_context import AttentionMetadata, StepContext


@torch.inference_mode()
def perplexity(runner: ModelRunner, token_ids: list[int], window: int = 256) -> float:
    """Runs on KV tensors of its own (bound to the layers for the call), so the engine's cache and
    the requests in it are untouched."""
    if window < 2 or len(token_ids) < 2:
        raise ValueError(f"need window >= 2 and >= 2 tokens, got window={window}, {len(token_ids)} tokens")
    layers = [layer.self_attn for layer in runner.model.model.layers]
    own = [(torch.empty((window, *k.shape[2:]), dtype=k.dtype, device=k.device).unsqueeze(1),
            torch.empty((window, *v.shape[2:]), dtype=v.dtype, device=v.device).unsqueeze(1))
           for k, v in runner.kv_caches]
    try:
        for attn, cache in zip(layers, own, strict=True):
            attn.kv_cache = cache
        return _perplexity(runner, token_ids, window)
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
