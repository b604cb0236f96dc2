"""The rank-aware cost of LoRA in a step, and of moving an adapter (LoRAServe, arXiv 2511.22880, §3).

A step's adapters add, per segment (the rows of one adapter) and per targeted projection, a shrink
``x A^T`` and an expand ``(x A^T) B^T``: ``2 · tokens · rank · (in + out)`` FLOPs, and the
adapter's ``rank · (in + out)`` weights read once. Each segment is priced as the engine's
``PerfModel`` prices an operator, max(FLOPs / peak, bytes / bandwidth), with its own efficiency
factors (small, skinny products reach less of the peaks than the base model's).

``padded=True`` prices a rank-oblivious kernel: every segment runs to the step's largest rank (a
BGMV over slots padded to one rank), so one rank-128 adapter makes the rank-8 ones in its batch
cost as much as itself — the rank skew that rank-aware placement avoids. ``padded=False`` prices
the engine's own SGMV (``edgecloud.llm.lora.ops``), whose segments stop at their own rank.

An adapter's size follows from its rank: ``rank · Σ(in + out)`` elements over the targeted
projections of every layer, which is what a load from disk or host memory, or a fetch from a
peer, moves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edgecloud.llm.perf_model import HardwareProfile, ModelProfile

# The projections a simulated adapter targets (PEFT's names); all seven by default.
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def projection_dims(model: ModelProfile) -> dict[str, tuple[int, int]]:
    """(in, out) features of each projection an adapter can target, for a dense model."""
    h, q, kv, inter = model.hidden_size, model.q_size, model.kv_size, model.intermediate_size
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


@dataclass(frozen=True)
class LoRACostModel:
    """Seconds of LoRA work in a step and bytes of an adapter, for one model on one device.

    ``elements_per_rank``: A and B elements per unit of rank over every targeted projection of
    every layer; ``weight_bytes``: bytes per adapter element; ``matmul_efficiency`` and
    ``memory_efficiency``: fractions of the hardware's peaks the LoRA products reach;
    ``segment_overhead_s``: fixed time per segment (per adapter in a step)."""

    hardware: HardwareProfile
    elements_per_rank: int
    weight_bytes: float = 2.0
    matmul_efficiency: float = 0.5
    memory_efficiency: float = 0.5
    segment_overhead_s: float = 0.0

    def __post_init__(self) -> None:
        if self.elements_per_rank < 1:
            raise ValueError(f"elements_per_rank must be >= 1, got {self.elements_per_rank}")
        for name in ("matmul_efficiency", "memory_efficiency"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")

    @classmethod
    def for_model(cls, hardware: HardwareProfile, model: ModelProfile, targets: Sequence[str] = ALL_TARGETS,
                  **factors: float) -> LoRACostModel:
        dims = projection_dims(model)
        unknown = [t for t in targets if t not in dims]
        if unknown:
            raise ValueError(f"targets: unknown projection(s) {unknown}; known: {', '.join(dims)}")
        per_layer = sum(dims[t][0] + dims[t][1] for t in targets)
        return cls(hardware, model.num_layers * per_layer, model.weight_bytes_per_param, **factors)

    def adapter_bytes(self, rank: int) -> float:
        return rank * self.elements_per_rank * self.weight_bytes

    def segment_time(self, tokens: int, rank: int) -> float:
        if tokens <= 0 or rank <= 0:
            return 0.0
        hw = self.hardware
        flops = 2.0 * tokens * rank * self.elements_per_rank
        compute = flops / (hw.peak_flops * self.matmul_efficiency)
        memory = self.adapter_bytes(rank) / (hw.memory_bandwidth * self.memory_efficiency)
        return max(compute, memory) + self.segment_overhead_s

    def step_time(self, segments: Iterable[tuple[int, int]], padded: bool = False) -> float:
        """LoRA seconds of a step whose adapters' segments are ``(tokens, rank)`` pairs."""
        pairs = [(t, r) for t, r in segments if t > 0 and r > 0]
        if not pairs:
            return 0.0
        top = max(r for _, r in pairs)
        return sum(self.segment_time(t, top if padded else r) for t, r in pairs)

    def rank_cost(self, model: ModelProfile) -> float:
        """Extra FLOPs per token per unit of rank, as a fraction of the base model's: a token of a
        rank-r adapter costs ``1 + r · rank_cost`` base tokens (the weight placement balances)."""
        return self.elements_per_rank / model.num_params
