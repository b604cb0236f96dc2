"""One cost model of an engine step: how long a batch takes on given hardware.

Per operator of a decoder layer (QKV, attention per request, O, MLP) and the LM head: time =
max(FLOPs / (peak x matmul efficiency), bytes / (bandwidth x memory efficiency)), plus per-step and
per-layer overheads. ``roofline_time`` is the plain bound of a whole step, max(all FLOPs / peak,
all bytes / bandwidth), with no efficiency and no overhead: what ``bench engine`` compares the
engine with. The discrete-event simulator prices steps with ``step_time`` and factors calibrated on
a real machine; PAT's ``PackCostModel`` takes its bandwidth and FLOP/s from the same
``HardwareProfile``.

Nothing here imports torch: hardware and model profiles are plain numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class HardwareProfile:
    """One accelerator (or CPU) as the cost model sees it. ``peak_flops`` for the serving dtype,
    ``memory_bandwidth`` in bytes/s; efficiencies in (0, 1] are what a real engine reaches of the
    peaks (calibrated; 1.0 = the roofline)."""

    name: str
    peak_flops: float
    memory_bandwidth: float
    network_bandwidth: float = 0.0  # bytes/s between devices (tensor/expert parallelism, KV transfer)
    matmul_efficiency: float = 1.0
    memory_efficiency: float = 1.0
    step_overhead_s: float = 0.0
    layer_overhead_s: float = 0.0
    memory_bytes: float = 0.0

    def calibrated(self, **factors: float) -> HardwareProfile:
        return replace(self, **factors)


# Public dense bf16/fp16 peaks and HBM bandwidths from the vendors' data sheets (no sparsity).
HARDWARE_PRESETS: dict[str, HardwareProfile] = {
    "a100": HardwareProfile("NVIDIA A100 SXM 80GB", 312e12, 2.039e12, 300e9, memory_bytes=80e9),
    "h100": HardwareProfile("NVIDIA H100 SXM", 989e12, 3.35e12, 450e9, memory_bytes=80e9),
    "h200": HardwareProfile("NVIDIA H200 SXM", 989e12, 4.8e12, 450e9, memory_bytes=141e9),
    # Huawei's published figures for the Ascend 910C package: ~780 TFLOP/s fp16, 3.2 TB/s HBM.
    "ascend910c": HardwareProfile("Huawei Ascend 910C", 780e12, 3.2e12, 196e9, memory_bytes=128e9),
}


@dataclass(frozen=True)
class ModelProfile:
    """The shapes that decide a step's cost, from a model's config."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    weight_bytes_per_param: float
    kv_bytes_per_element: float

    @classmethod
    def from_config(cls, config: object, weight_bytes: float, kv_bytes: float | None = None) -> ModelProfile:
        """From an engine ``ModelConfig`` (or anything with its fields)."""
        c = config
        return cls(
            num_layers=c.num_hidden_layers,  # type: ignore[attr-defined]
            hidden_size=c.hidden_size,  # type: ignore[attr-defined]
            intermediate_size=c.intermediate_size,  # type: ignore[attr-defined]
            num_heads=c.num_attention_heads,  # type: ignore[attr-defined]
            num_kv_heads=c.num_key_value_heads,  # type: ignore[attr-defined]
            head_dim=c.head_dim,  # type: ignore[attr-defined]
            vocab_size=c.vocab_size,  # type: ignore[attr-defined]
            weight_bytes_per_param=weight_bytes,
            kv_bytes_per_element=weight_bytes if kv_bytes is None else kv_bytes,
        )

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        attention = self.hidden_size * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden_size
        return attention + 3 * self.hidden_size * self.intermediate_size

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def kv_bytes_per_token(self) -> float:
        """K and V of one token over all layers."""
        return 2 * self.num_layers * self.kv_size * self.kv_bytes_per_element


@dataclass(frozen=True)
class StepShape:
    """One scheduled request in a step: ``num_new_tokens`` computed, reaching ``context_len``
    tokens of context, and whether its last position is sampled (goes through the LM head)."""

    num_new_tokens: int
    context_len: int
    sampled: bool = True


@dataclass
class StepCost:
    """Seconds per part of one step (``step_time`` is their sum)."""

    layers: float = 0.0
    attention: float = 0.0
    lm_head: float = 0.0
    overhead: float = 0.0

    @property
    def total(self) -> float:
        return self.layers + self.attention + self.lm_head + self.overhead


class PerfModel:
    def __init__(self, hardware: HardwareProfile, model: ModelProfile) -> None:
        self.hw = hardware
        self.model = model

    def _op(self, flops: float, bytes_moved: float) -> float:
        hw = self.hw
        compute = flops / (hw.peak_flops * hw.matmul_efficiency)
        return max(compute, bytes_moved / (hw.memory_bandwidth * hw.memory_efficiency))

    @staticmethod
    def _pairs(s: StepShape) -> int:
        """(query, key) pairs the step's new tokens attend to (causal)."""
        start = s.context_len - s.num_new_tokens
        return s.num_new_tokens * start + s.num_new_tokens * (s.num_new_tokens + 1) // 2

    def step_cost(self, batch: Iterable[StepShape]) -> StepCost:
        m, hw = self.model, self.hw
        shapes = list(batch)
        cost = StepCost()
        if not shapes:
            return cost
        tokens = sum(s.num_new_tokens for s in shapes)
        sampled = sum(1 for s in shapes if s.sampled)
        w, act = m.weight_bytes_per_param, m.weight_bytes_per_param
        h = m.hidden_size
        per_layer = 0.0
        # QKV, O and the MLP are matrix products over all the step's tokens, weights read once.
        for rows, cols in ((h, m.q_size + 2 * m.kv_size), (m.q_size, h), (h, 2 * m.intermediate_size),
                           (m.intermediate_size, h)):
            per_layer += self._op(2 * tokens * rows * cols, rows * cols * w + tokens * (rows + cols) * act)
        cost.layers = m.num_layers * per_layer
        kv_token_layer = 2 * m.kv_size * m.kv_bytes_per_element
        attention = 0.0
        for s in shapes:
            flops = 4 * m.num_heads * m.head_dim * self._pairs(s)
            bytes_moved = s.context_len * kv_token_layer + s.num_new_tokens * (2 * m.q_size * act + kv_token_layer)
            attention += self._op(flops, bytes_moved)
        cost.attention = m.num_layers * attention
        cost.lm_head = self._op(2 * sampled * m.lm_head_params, m.lm_head_params * w + sampled * (h + m.vocab_size) * 4)
        cost.overhead = hw.step_overhead_s + m.num_layers * hw.layer_overhead_s
        return cost

    def step_time(self, batch: Iterable[StepShape]) -> float:
        return self.step_cost(batch).total

    def roofline_time(self, batch: Iterable[StepShape]) -> float:
        """The bound no engine beats: all FLOPs at peak, or all bytes at full bandwidth. Bytes are
        the weights (layers and LM head, each read once), the KV read and the KV written."""
        m = self.model
        shapes = list(batch)
        if not shapes:
            return 0.0
        tokens = sum(s.num_new_tokens for s in shapes)
        sampled = sum(1 for s in shapes if s.sampled)
        weights = (m.num_layers * m.layer_params + m.lm_head_params) * m.weight_bytes_per_param
        kv = sum(s.context_len for s in shapes) * m.kv_bytes_per_token
        flops = (2 * tokens * m.num_layers * m.layer_params + 2 * sampled * m.lm_head_params
                 + sum(4 * m.num_layers * m.num_heads * m.head_dim * self._pairs(s) for s in shapes))
        return max(flops / self.hw.peak_flops, (weights + kv) / self.hw.memory_bandwidth)
