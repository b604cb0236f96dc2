"""One cost model of an engine step: how long a batch takes on given hardware.

Per operator of a decoder layer (QKV, attention per request, O, MLP or mixture of experts) and the
LM head: time = max(FLOPs / (peak x matmul efficiency), bytes / (bandwidth x memory efficiency)),
plus per-step, per-sequence and per-layer overheads. An instance may span several devices
(``Parallelism``): dense parts are tensor-parallel (each device computes and reads its share, two
all-reduces of the activations per layer), routed experts are expert-parallel (tokens dispatched
to the devices holding their experts and combined back, an all-to-all each way); collectives cost
bytes / network bandwidth (the inter-node link when the instance spans nodes) plus a latency.
``roofline_time`` is the plain bound of a whole step on one device, max(all FLOPs / peak, all
bytes / bandwidth), with no efficiency and no overhead: what ``bench engine`` compares the engine
with. The discrete-event simulator (``edgecloud.sim``) prices steps with ``step_time`` and factors
calibrated on a real machine; PAT's ``PackCostModel`` takes its bandwidth and FLOP/s from the same
``HardwareProfile``.

Mixture of experts (DeepSeek-V3, Mixtral, Qwen-MoE): a step's routed tokens touch, in expectation,
E·(1 − (1 − k/E)^T) of the E experts (T tokens, k experts each, uniform routing); their weights
are read once, their FLOPs are 2·T·k·3·H·I. ``moe_imbalance`` (max over devices / mean expert
load, 1 = balanced) stretches the expert part: the device with the hottest experts sets the step,
which is what expert placement (OmniPlacement, EPLB) changes. Multi-head latent attention (MLA,
DeepSeek-V2/V3) caches one compressed latent of ``kv_lora_rank + qk_rope_head_dim`` elements per
token and layer, shared by all heads, and attends in the absorbed form.

Nothing here imports torch: hardware and model profiles are plain numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class HardwareProfile:
    """One accelerator (or CPU) as the cost model sees it. ``peak_flops`` for the serving dtype,
    ``memory_bandwidth`` in bytes/s; efficiencies in (0, 1] are what a real engine reaches of the
    peaks (calibrated; 1.0 = the roofline). ``network_bandwidth`` links devices of one node
    (NVLink, HCCS), ``inter_node_bandwidth`` devices of different nodes (per device, e.g.
    InfiniBand); ``network_latency_s`` is paid per collective and per KV transfer."""

    name: str
    peak_flops: float
    memory_bandwidth: float
    network_bandwidth: float = 0.0  # bytes/s between devices (tensor/expert parallelism, KV transfer)
    matmul_efficiency: float = 1.0
    memory_efficiency: float = 1.0
    step_overhead_s: float = 0.0
    layer_overhead_s: float = 0.0
    memory_bytes: float = 0.0
    seq_overhead_s: float = 0.0  # per request in a step: its inputs, its sampling (host-side work)
    inter_node_bandwidth: float = 0.0  # bytes/s per device between nodes; 0 = network_bandwidth
    devices_per_node: int = 8
    network_latency_s: float = 0.0

    def calibrated(self, **factors: float) -> HardwareProfile:
        return replace(self, **factors)

    def link_bandwidth(self, devices: int) -> float:
        """Bandwidth per device of a collective over ``devices`` devices (spanning nodes or not)."""
        if devices > self.devices_per_node and self.inter_node_bandwidth > 0:
            return self.inter_node_bandwidth
        return self.network_bandwidth


# Public dense bf16/fp16 peaks and HBM bandwidths from the vendors' data sheets (no sparsity);
# NVLink 4 gives an H100/H200 450 GB/s each way, NDR InfiniBand 400 Gb/s (50 GB/s) per GPU.
HARDWARE_PRESETS: dict[str, HardwareProfile] = {
    "a100": HardwareProfile("NVIDIA A100 SXM 80GB", 312e12, 2.039e12, 300e9, memory_bytes=80e9,
                            inter_node_bandwidth=25e9, network_latency_s=10e-6),
    "h100": HardwareProfile("NVIDIA H100 SXM", 989e12, 3.35e12, 450e9, memory_bytes=80e9,
                            inter_node_bandwidth=50e9, network_latency_s=10e-6),
    "h200": HardwareProfile("NVIDIA H200 SXM", 989e12, 4.8e12, 450e9, memory_bytes=141e9,
                            inter_node_bandwidth=50e9, network_latency_s=10e-6),
    # Huawei's published figures for the Ascend 910C package: ~780 TFLOP/s fp16, 3.2 TB/s HBM,
    # HCCS within a node, 200 Gb/s RoCE per NPU between nodes.
    "ascend910c": HardwareProfile("Huawei Ascend 910C", 780e12, 3.2e12, 196e9, memory_bytes=128e9,
                                  inter_node_bandwidth=25e9, network_latency_s=15e-6),
}


@dataclass(frozen=True)
class MoEProfile:
    """Mixture-of-experts MLPs: ``num_experts`` routed experts of ``expert_intermediate_size``,
    ``experts_per_token`` of them per token, ``num_shared_experts`` always on; the first
    ``num_dense_layers`` layers keep the dense MLP (DeepSeek-V3's ``first_k_dense_replace``)."""

    num_experts: int
    experts_per_token: int
    expert_intermediate_size: int
    num_shared_experts: int = 0
    num_dense_layers: int = 0


@dataclass(frozen=True)
class MLAProfile:
    """Multi-head latent attention (DeepSeek-V2/V3)."""

    q_lora_rank: int
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int


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
    moe: MoEProfile | None = None
    mla: MLAProfile | None = None
    activation_bytes: float | None = None  # activations' element size (None: the weights')

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
    def act_bytes(self) -> float:
        return self.weight_bytes_per_param if self.activation_bytes is None else self.activation_bytes

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def attention_matrices(self) -> tuple[tuple[int, int], ...]:
        """(rows, columns) of a layer's attention projections."""
        h = self.hidden_size
        if self.mla is None:
            return ((h, self.q_size + 2 * self.kv_size), (self.q_size, h))
        a = self.mla
        heads = self.num_heads
        return (
            (h, a.q_lora_rank), (a.q_lora_rank, heads * (a.qk_nope_head_dim + a.qk_rope_head_dim)),
            (h, a.kv_lora_rank + a.qk_rope_head_dim), (a.kv_lora_rank, heads * (a.qk_nope_head_dim + a.v_head_dim)),
            (heads * a.v_head_dim, h),
        )

    @property
    def kv_elements_per_token_layer(self) -> int:
        """Cached K and V elements of one token in one layer (MLA: the shared latent)."""
        if self.mla is None:
            return 2 * self.kv_size
        return self.mla.kv_lora_rank + self.mla.qk_rope_head_dim

    @property
    def attention_flops_per_pair(self) -> float:
        """FLOPs of one (query, key) pair over all heads: scores and the weighted sum."""
        if self.mla is None:
            return 4 * self.num_heads * self.head_dim
        a = self.mla
        return 2 * self.num_heads * (2 * a.kv_lora_rank + a.qk_rope_head_dim)

    @property
    def num_moe_layers(self) -> int:
        return 0 if self.moe is None else self.num_layers - self.moe.num_dense_layers

    @property
    def layer_params(self) -> int:
        """Parameters of a dense layer (attention and MLP)."""
        attention = sum(rows * cols for rows, cols in self.attention_matrices)
        return attention + 3 * self.hidden_size * self.intermediate_size

    @property
    def expert_params(self) -> int:
        assert self.moe is not None
        return 3 * self.hidden_size * self.moe.expert_intermediate_size

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        """Every weight: layers (routed and shared experts included) and the LM head."""
        dense = (self.num_layers - self.num_moe_layers) * self.layer_params
        if self.moe is None:
            return dense + self.lm_head_params
        attention = sum(rows * cols for rows, cols in self.attention_matrices)
        per_moe_layer = attention + (self.moe.num_experts + self.moe.num_shared_experts) * self.expert_params
        return dense + self.num_moe_layers * per_moe_layer + self.lm_head_params

    @property
    def weight_bytes(self) -> float:
        return self.num_params * self.weight_bytes_per_param

    @property
    def kv_bytes_per_token(self) -> float:
        """K and V of one token over all layers."""
        return self.num_layers * self.kv_elements_per_token_layer * self.kv_bytes_per_element


@dataclass(frozen=True)
class Parallelism:
    """How one instance spreads over ``devices`` accelerators: dense parts tensor-parallel over all
    of them, routed experts expert-parallel over all of them. With ``data_parallel_attention`` the
    dense parts (attention, dense and shared MLPs, LM head) are data-parallel instead: each device
    holds all their weights and runs its share of the batch, no all-reduce; only the experts'
    dispatch and combine cross devices (DeepSeek's and OmniInfer's large-EP decode)."""

    devices: int = 1
    data_parallel_attention: bool = False

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError(f"devices must be >= 1, got {self.devices}")


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
    experts: float = 0.0
    network: float = 0.0

    @property
    def total(self) -> float:
        return self.layers + self.attention + self.lm_head + self.overhead + self.experts + self.network


class PerfModel:
    def __init__(self, hardware: HardwareProfile, model: ModelProfile, parallel: Parallelism = Parallelism()) -> None:
        self.hw = hardware
        self.model = model
        self.parallel = parallel

    def _op(self, flops: float, bytes_moved: float) -> float:
        hw = self.hw
        compute = flops / (hw.peak_flops * hw.matmul_efficiency)
        return max(compute, bytes_moved / (hw.memory_bandwidth * hw.memory_efficiency))

    @staticmethod
    def _pairs(s: StepShape) -> int:
        """(query, key) pairs the step's new tokens attend to (causal)."""
        start = s.context_len - s.num_new_tokens
        return s.num_new_tokens * start + s.num_new_tokens * (s.num_new_tokens + 1) // 2

    def _dense(self, tokens: int, rows: int, cols: int, share: int) -> float:
        """A matrix product over ``tokens`` rows, its columns split over ``share`` devices."""
        m = self.model
        cols_here = cols / share
        return self._op(2 * tokens * rows * cols_here,
                        rows * cols_here * m.weight_bytes_per_param + tokens * (rows + cols_here) * m.act_bytes)

    def _collective(self, bytes_per_device: float) -> float:
        devices = self.parallel.devices
        if devices == 1 or bytes_per_device <= 0:
            return 0.0
        bandwidth = self.hw.link_bandwidth(devices)
        if bandwidth <= 0:
            raise ValueError(f"{self.hw.name}: network_bandwidth is needed to spread an instance over {devices} "
                             "devices")
        return self.hw.network_latency_s + bytes_per_device / bandwidth

    def step_cost(self, batch: Iterable[StepShape], moe_imbalance: float = 1.0,
                  dispatch_imbalance: float = 1.0) -> StepCost:
        """``moe_imbalance`` stretches the routed experts (the busiest device's expert time over the
        balanced one), ``dispatch_imbalance`` the dispatch and combine (the busiest device's routed
        tokens over the mean: it receives and sends back the most)."""
        m, hw, n = self.model, self.hw, self.parallel.devices
        shapes = list(batch)
        cost = StepCost()
        if not shapes:
            return cost
        tokens = sum(s.num_new_tokens for s in shapes)
        sampled = sum(1 for s in shapes if s.sampled)
        h = m.hidden_size
        dp = self.parallel.data_parallel_attention and n > 1
        # Dense parts: the columns split over the devices (tensor parallel), or each device its
        # share of the tokens with every column (data parallel; the batch assumed spread evenly).
        split, local = (1, -(-tokens // n)) if dp else (n, tokens)
        attention_part = sum(self._dense(local, rows, cols, split) for rows, cols in m.attention_matrices)
        mlp = self._dense(local, h, 2 * m.intermediate_size, split) + self._dense(local, m.intermediate_size, h, split)
        dense_layers = m.num_layers - m.num_moe_layers
        cost.layers = dense_layers * (attention_part + mlp) + m.num_moe_layers * attention_part
        if m.moe is not None and m.num_moe_layers:
            cost.experts = m.num_moe_layers * self._moe_layer(tokens, moe_imbalance)
        kv_token_layer = m.kv_elements_per_token_layer * m.kv_bytes_per_element
        # Heads split over the devices; GQA's KV heads as far as there are heads to split, MLA's
        # latent is shared by all heads and so read whole on every device.
        kv_share = 1 if m.mla is not None or dp else min(n, m.num_kv_heads)
        attention = 0.0
        for s in shapes:
            flops = m.attention_flops_per_pair * self._pairs(s) / split
            bytes_moved = (s.context_len * kv_token_layer / kv_share
                           + s.num_new_tokens * (2 * m.q_size * m.act_bytes / split + kv_token_layer / kv_share))
            attention += self._op(flops, bytes_moved)
        # Data parallel: each device attends for its share of the requests.
        cost.attention = m.num_layers * attention / (n if dp else 1)
        head = m.lm_head_params / split
        head_rows = -(-sampled // n) if dp else sampled
        cost.lm_head = self._op(2 * head_rows * head,
                                head * m.weight_bytes_per_param + head_rows * (h + m.vocab_size) * 4)
        # Per-sequence host work: one host for the instance, or one per data-parallel rank.
        cost.overhead = (hw.step_overhead_s + m.num_layers * hw.layer_overhead_s
                         + len(shapes) / (n if dp else 1) * hw.seq_overhead_s)
        if dp:
            if m.moe is not None:  # nothing else crosses devices
                all_to_all = self._collective((n - 1) / n * tokens * m.moe.experts_per_token * h * m.act_bytes / n)
                cost.network = 2 * m.num_moe_layers * all_to_all * dispatch_imbalance
        elif n > 1:
            # Ring all-reduce after attention and after the MLP: each device sends 2(n-1)/n of the data.
            all_reduce = self._collective(2 * (n - 1) / n * tokens * h * m.act_bytes)
            cost.network = 2 * m.num_layers * all_reduce
            if m.moe is not None:
                # Dispatch and combine: the share of each device's routed tokens that lives elsewhere.
                all_to_all = self._collective((n - 1) / n * tokens * m.moe.experts_per_token * h * m.act_bytes / n)
                cost.network += 2 * m.num_moe_layers * all_to_all * dispatch_imbalance
        return cost

    def _moe_layer(self, tokens: int, imbalance: float) -> float:
        """One MoE layer's experts on the busiest device: shared experts (tensor-parallel) plus the
        routed ones this device holds, stretched by the load ``imbalance``."""
        m, n = self.model, self.parallel.devices
        moe = m.moe
        assert moe is not None
        inter = moe.expert_intermediate_size
        shared = 0.0
        if moe.num_shared_experts:
            width = moe.num_shared_experts * inter
            split, local = (1, -(-tokens // n)) if self.parallel.data_parallel_attention and n > 1 else (n, tokens)
            shared = (self._dense(local, m.hidden_size, 2 * width, split)
                      + self._dense(local, width, m.hidden_size, split))
        experts = moe.num_experts
        routed_tokens = tokens * moe.experts_per_token
        touched = experts * (1.0 - (1.0 - moe.experts_per_token / experts) ** tokens)
        return shared + imbalance * self.expert_time(routed_tokens / n, touched / n)

    def expert_time(self, routed_tokens: float, experts_touched: float) -> float:
        """One device's routed experts in one MoE layer: ``routed_tokens`` (token, expert) pairs over
        ``experts_touched`` experts whose weights it reads (what a placement simulation prices per
        device, ``edgecloud.sim.moe``)."""
        m = self.model
        assert m.moe is not None
        flops = 2 * routed_tokens * m.expert_params
        bytes_moved = (experts_touched * m.expert_params * m.weight_bytes_per_param
                       + routed_tokens * (2 * m.hidden_size + 3 * m.moe.expert_intermediate_size) * m.act_bytes)
        return self._op(flops, bytes_moved)

    def step_time(self, batch: Iterable[StepShape], moe_imbalance: float = 1.0,
                  dispatch_imbalance: float = 1.0) -> float:
        return self.step_cost(batch, moe_imbalance, dispatch_imbalance).total

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
                 + sum(m.num_layers * m.attention_flops_per_pair * self._pairs(s) for s in shapes))
        return max(flops / self.hw.peak_flops, (weights + kv) / self.hw.memory_bandwidth)
