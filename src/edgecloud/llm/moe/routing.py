"""Top-k routing of mixture-of-experts layers, exactly as each family computes it.

* softmax (Mixtral, Qwen2-MoE, Qwen3-MoE): probabilities over all experts in float32, the top k,
  renormalised when ``norm_topk_prob`` (always for Mixtral);
* sigmoid with grouped top-k (DeepSeek-V3, "noaux_tc"): independent scores in float32; the choice
  adds ``e_score_correction_bias`` (the load-balancing bias learned without an auxiliary loss), keeps
  the ``topk_groups`` best of ``num_groups`` groups (each scored by the sum of its two best experts),
  and takes the top k inside them; the weights are the chosen experts' unbiased scores, normalised
  and multiplied by ``routed_scaling_factor``.

Every reduction runs in the order transformers runs it (top-k order), and only then are a token's
choices sorted by expert id: the MoE layer adds expert outputs in ascending expert order, which is
the order transformers' expert loop adds them in, so results agree bit for bit where the matrix
products do.
"""

from __future__ import annotations

import torch

from edgecloud.llm.config import MoEConfig


def route(
    logits: torch.Tensor, config: MoEConfig, correction_bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits`` ``[tokens, experts]`` -> (expert ids ``[tokens, k]`` int64 in ascending order,
    routing weights ``[tokens, k]``: float32, or the logits' dtype with ``weights_in_model_dtype``)."""
    if config.scoring == "sigmoid":
        ids, weights = _grouped_sigmoid(logits.float(), config, correction_bias)
    else:
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
        weights, ids = torch.topk(probs, config.top_k, dim=-1)
        if config.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if config.weights_in_model_dtype:
            weights = weights.to(logits.dtype)
    ids, order = torch.sort(ids, dim=-1)
    return ids, weights.gather(1, order)


def _grouped_sigmoid(
    logits: torch.Tensor, config: MoEConfig, correction_bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    tokens, experts = logits.shape
    scores = logits.sigmoid()
    choice = scores if correction_bias is None else scores + correction_bias.float()
    groups = config.num_groups
    group_scores = choice.view(tokens, groups, experts // groups).topk(2, dim=-1)[0].sum(dim=-1)
    best_groups = torch.topk(group_scores, k=config.topk_groups, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores).scatter_(1, best_groups, 1)
    expert_mask = group_mask.unsqueeze(-1).expand(tokens, groups, experts // groups).reshape(tokens, experts)
    choice = choice.masked_fill(~expert_mask.bool(), float("-inf"))
    ids = torch.topk(choice, k=config.top_k, dim=-1, sorted=False)[1]
    weights = scores.gather(1, ids)
    if config.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return ids, weights * config.routed_scaling_factor
