"""What a token sees on an OmniAttn-compressed (``sink_window``) layer, as a prefill mask.

Decode on such a layer reads the request's held blocks (sink + window) through the ordinary decode
backends: the block table is simply shorter. Prefill chunks need a mask instead, in two cases:

- a prompt token attends to every earlier key the layer holds: all of them, unless a prefix hit
  brought only the sink and window of a cached part (``kv_cache/manager.py``);
- a token past the prompt (recomputed after a preemption, or a teacher-forced continuation in the
  quality evaluation) sees what it would have seen when decoded: the sink and its window.

One function builds that mask, for the engine's runner and for ``edgecloud.llm.omniattn``'s
evaluation alike, so what is measured is what is served.
"""

from __future__ import annotations

import torch


def sink_window_mask(
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    num_prompt_tokens: int,
    sink_blocks: int,
    window_blocks: int,
    block_size: int,
) -> torch.Tensor:
    """``[queries, keys]`` bool: may the query at each position attend to the key at each position
    (keys are the ones the layer holds). Causal; past the prompt, only the sink's
    ``sink_blocks * block_size`` tokens and the ``window_blocks`` blocks ending at the query's own."""
    q = query_positions[:, None]
    k = key_positions[None, :]
    window_start = (torch.div(q, block_size, rounding_mode="floor") + 1 - window_blocks) * block_size
    in_view = (k < sink_blocks * block_size) | (k >= window_start) | (q < num_prompt_tokens)
    return (k <= q) & in_view
