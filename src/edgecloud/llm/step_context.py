"""What every module of the model sees of one engine step (design: docs/engine-core.md).

``ModelRunner`` builds one ``StepContext`` per step and passes it to every decoder layer, its
attention and its MLP, instead of a global context (nano-vllm) or arguments threaded by hand:
attention metadata per layer group, and the slots where LoRA segment indices (``lora``) and MoE
state (``moe``: expert maps, routing counters) travel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from edgecloud.llm.attention.backend import DecodeAttentionBackend
from edgecloud.llm.attention.prefill import PrefillSegment
from edgecloud.llm.lora.batch import LoRABatch


@dataclass
class AttentionMetadata:
    """What the attention layers of one layer group need for a step (built once, shared by them)."""

    slot_mapping: torch.Tensor  # [num_tokens] flat cache slot to write each new token's K/V
    num_prefill_tokens: int
    prefill: list[PrefillSegment]
    decode_backend: DecodeAttentionBackend | None
    decode_plan: Any


class StepInterrupted(Exception):
    """The step was abandoned between layers for waiting online work; ``layer``: the last layer run."""

    def __init__(self, layer: int) -> None:
        super().__init__(f"step abandoned after layer {layer}")
        self.layer = layer


@dataclass
class StepContext:
    attention: list[AttentionMetadata]  # per layer group
    layer_group: tuple[int, ...]  # layer index -> its group's index
    lora: LoRABatch | None = None  # the step's adapter segments (docs/lora.md)
    moe: Any = None
    # asked after each decoder layer of a step that may be abandoned (only flex work in it): True
    # stops the forward pass with StepInterrupted (docs/engine-core.md, preemption between layers)
    interrupt: Callable[[], bool] | None = None
    # runs decoder layers [first, last) of a one-token step in one call, with the LM head if asked
    # (llm/quant/decode_stack.py), set by the runner for the steps and models it describes; None:
    # module by module
    decode_stack: Callable[..., torch.Tensor | None] | None = None

    def attention_for(self, layer_idx: int) -> AttentionMetadata:
        return self.attention[self.layer_group[layer_idx]]
