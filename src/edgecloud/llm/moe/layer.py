"""The mixture-of-experts MLP block: router, routed experts in physical slots, shared experts.

``make_mlp`` builds a ``SparseMoE`` for every layer that ``ModelConfig.moe.layers`` names. Experts are
stored fused, as transformers 5 holds them in memory: ``w13 [slots, 2I, H]`` (gate rows, then up
rows) and ``w2 [slots, H, I]``; loading puts logical expert ``e`` in slot ``e``, and the step's
``ExpertRuntime`` (``ctx.moe``) says which logical expert each slot of this rank holds now.

A step: the router picks each token's top-k experts (``routing.route``); each (token, choice) goes to
one replica of its expert (round-robin over the replicas, so a hot expert's tokens split evenly);
this rank computes the pairs whose replica it holds, one expert at a time, weighting each output by
its routing weight; the outputs go into a ``[tokens, k, hidden]`` buffer in which every entry is
written by exactly one rank. With expert parallelism the ranks sum that buffer (all-reduce): adding
zeros is exact, so every rank gets the same numbers whatever the placement, and a token's k outputs
are then added in ascending expert order, the order transformers adds them in. The routing counters
(choices per expert, tokens per slot) are accumulated on the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from edgecloud.llm.config import ModelConfig
from edgecloud.llm.layers.mlp import _ACTIVATIONS, GatedMLP
from edgecloud.llm.moe.routing import route
from edgecloud.llm.moe.runtime import LayerExperts, all_reduce_sum
from edgecloud.llm.step_context import StepContext


class Router(torch.nn.Module):
    """The gate: ``[experts, hidden]`` logits weights, and DeepSeek-V3's score correction bias."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        moe = config.moe
        assert moe is not None
        self.config = moe
        self.weight = torch.nn.Parameter(torch.empty(moe.num_experts, config.hidden_size), requires_grad=False)
        if moe.score_correction_bias:
            self.e_score_correction_bias = torch.nn.Parameter(torch.zeros(moe.num_experts), requires_grad=False)
        else:
            self.e_score_correction_bias = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = F.linear(x.float(), self.weight.float()) if self.config.router_fp32 else F.linear(x, self.weight)
        return route(logits, self.config, self.e_score_correction_bias)


class ExpertSlots(torch.nn.Module):
    """The routed experts this rank holds, one per physical slot."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        moe = config.moe
        assert moe is not None
        self.num_experts = moe.num_experts
        self.intermediate_size = moe.intermediate_size
        h, i = config.hidden_size, moe.intermediate_size
        self.w13 = torch.nn.Parameter(torch.empty(moe.num_experts, 2 * i, h), requires_grad=False)
        self.w2 = torch.nn.Parameter(torch.empty(moe.num_experts, h, i), requires_grad=False)
        if config.hidden_act not in _ACTIVATIONS:
            raise ValueError(f"config.json: hidden_act={config.hidden_act!r} is not supported")
        self.act = _ACTIVATIONS[config.hidden_act]

    def forward(
        self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, experts: LayerExperts | None
    ) -> torch.Tensor:
        tokens, k = ids.shape
        flat = ids.reshape(-1)
        pairs = flat.numel()
        if experts is None:  # no runtime (a module used on its own): slot e holds expert e, all here
            local = flat
        else:
            experts.expert_counts += torch.bincount(flat, minlength=self.num_experts)
            slot = self._dispatch(flat, experts)
            experts.slot_counts += torch.bincount(slot, minlength=experts.slot_counts.numel())
            local = experts.local_slot[slot]
        out = x.new_zeros(pairs, x.shape[-1])
        order = torch.argsort(local, stable=True)
        counts = torch.bincount(local + 1, minlength=self.w13.shape[0] + 1)[1:].tolist()
        start = int((local < 0).sum())
        flat_weights = weights.reshape(-1)
        for index, count in enumerate(counts):
            if not count:
                continue
            rows = order[start : start + count]
            start += count
            gate, up = F.linear(x[rows // k], self.w13[index]).chunk(2, dim=-1)
            y = F.linear(self.act(gate) * up, self.w2[index])
            out[rows] = (y * flat_weights[rows, None]).to(x.dtype)
        if experts is not None and experts.world_size > 1:
            all_reduce_sum(out, experts.group)
        out = out.view(tokens, k, -1)
        result = out[:, 0]
        for choice in range(1, k):
            result = result + out[:, choice]
        return result

    @staticmethod
    def _dispatch(flat: torch.Tensor, experts: LayerExperts) -> torch.Tensor:
        """The physical slot of each (token, choice): the i-th pair of an expert in the step goes to
        its replica i mod (replicas)."""
        order = torch.argsort(flat, stable=True)
        sorted_ids = flat[order]
        first = torch.searchsorted(sorted_ids, sorted_ids, right=False)
        position = torch.arange(flat.numel(), device=flat.device) - first
        replica = position % experts.num_replicas[sorted_ids]
        slot = torch.empty_like(flat)
        slot[order] = experts.replicas[sorted_ids, replica]
        return slot


class SparseMoE(torch.nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        moe = config.moe
        assert moe is not None
        self.layer_idx = layer_idx
        self.gate = Router(config)
        self.experts = ExpertSlots(config)
        self.shared_experts = None
        self.shared_expert_gate = None
        if moe.shared_intermediate_size:
            self.shared_experts = GatedMLP(
                config.hidden_size, moe.shared_intermediate_size, config.hidden_act, False, layer_idx
            )
            if moe.shared_expert_gate:
                self.shared_expert_gate = torch.nn.Linear(config.hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor, ctx: StepContext | None = None) -> torch.Tensor:
        ids, weights = self.gate(x)
        runtime = None if ctx is None else ctx.moe
        out = self.experts(x, ids, weights, None if runtime is None else runtime.layer(self.layer_idx))
        if self.shared_experts is not None:
            shared = self.shared_experts(x)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
            out = out + shared
        return out
