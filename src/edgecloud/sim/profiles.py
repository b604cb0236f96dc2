"""Model and hardware profiles of the simulator.

Models come from their HF ``config.json``: a file or directory the user gives, or one of the
published configurations written out below (the values of each model's ``config.json`` on the
Hugging Face Hub, nothing downloaded): Llama-3-8B and -70B, Qwen2.5-7B, and DeepSeek-V3 with its
mixture-of-experts layers and multi-head latent attention.

Hardware: the engine's presets (``edgecloud.llm.perf_model.HARDWARE_PRESETS``: A100, H100, H200,
Ascend 910C from public data sheets) with the efficiency factors below, or a profile that
``edgecloud sim calibrate`` fitted on this machine (a JSON file). The accelerators' factors are
assumptions, not measurements (no accelerator was available to calibrate on; docs/cluster.md):
GEMMs at 70% of the dense peak, HBM streams at 80% of the bandwidth, 2 ms of host work per step
(scheduling, input preparation, sampling, kernel launches with CUDA graphs) and 10 µs per
sequence; every figure from them is labelled simulated.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecloud.llm.perf_model import (
    HARDWARE_PRESETS,
    HardwareProfile,
    MLAProfile,
    ModelProfile,
    MoEProfile,
    Parallelism,
    PerfModel,
    StepCost,
    StepShape,
)

if TYPE_CHECKING:
    from edgecloud.llm.config import EngineConfig
    from edgecloud.sim.instance import SimEngineConfig

_LLAMA3_COMMON: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "vocab_size": 128256,
    "max_position_embeddings": 8192, "rope_theta": 500000.0, "rms_norm_eps": 1e-05, "bos_token_id": 128000,
    "eos_token_id": 128001, "tie_word_embeddings": False, "attention_bias": False, "torch_dtype": "bfloat16",
}

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    # meta-llama/Meta-Llama-3-8B
    "llama-3-8b": {**_LLAMA3_COMMON, "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
                   "num_hidden_layers": 32, "num_key_value_heads": 8},
    # meta-llama/Meta-Llama-3-70B
    "llama-3-70b": {**_LLAMA3_COMMON, "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
                    "num_hidden_layers": 80, "num_key_value_heads": 8},
    # Qwen/Qwen2.5-7B-Instruct
    "qwen2.5-7b": {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "hidden_size": 3584,
        "intermediate_size": 18944, "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
        "vocab_size": 152064, "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-06,
        "sliding_window": 131072, "use_sliding_window": False, "tie_word_embeddings": False,
        "bos_token_id": 151643, "eos_token_id": 151645, "torch_dtype": "bfloat16",
    },
    # deepseek-ai/DeepSeek-V3 (weights in fp8 e4m3 with 128x128 block scales: quantization_config)
    "deepseek-v3": {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_act": "silu",
        "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
        "num_attention_heads": 128, "num_key_value_heads": 128, "n_shared_experts": 1, "n_routed_experts": 256,
        "num_experts_per_tok": 8, "first_k_dense_replace": 3, "moe_layer_freq": 1, "n_group": 8, "topk_group": 4,
        "routed_scaling_factor": 2.5, "kv_lora_rank": 512, "q_lora_rank": 1536, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64, "v_head_dim": 128, "vocab_size": 129280, "max_position_embeddings": 163840,
        "rope_theta": 10000, "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                              "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        "rms_norm_eps": 1e-06, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                "weight_block_size": [128, 128]},
    },
}

# Assumed, not measured (see the module docstring): what the accelerators' factors are set to.
ACCELERATOR_FACTORS: dict[str, float] = {
    "matmul_efficiency": 0.7, "memory_efficiency": 0.8, "step_overhead_s": 2e-3, "seq_overhead_s": 10e-6,
}


class ProfileError(ValueError):
    """A model or hardware profile that cannot be built; the message names what is wrong."""


@dataclass(frozen=True)
class ModelSpec:
    """A model for the simulator: its cost profile and what bounds a request on it."""

    name: str
    profile: ModelProfile
    max_model_len: int


def _need(raw: dict[str, Any], key: str, where: str) -> Any:
    if key not in raw:
        raise ProfileError(f"{where}: missing {key!r}")
    return raw[key]


def model_from_config(raw: dict[str, Any], name: str = "model", weight_bytes: float | None = None,
                      kv_bytes: float | None = None) -> ModelSpec:
    """A ``ModelSpec`` from an HF config dict: dense (Llama, Qwen2, Mistral, Qwen3) or DeepSeek-V3
    style (MoE + MLA). Weights and KV take the config's dtype (fp8 for an fp8-quantized
    checkpoint) unless ``weight_bytes`` / ``kv_bytes`` say otherwise."""
    where = f"{name} config"
    hidden = int(_need(raw, "hidden_size", where))
    heads = int(_need(raw, "num_attention_heads", where))
    dtype = str(raw.get("torch_dtype") or raw.get("dtype") or "bfloat16")
    element = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}.get(dtype, 2.0)
    quant = raw.get("quantization_config") or {}
    weights = weight_bytes or (1.0 if quant.get("quant_method") == "fp8" else element)
    moe = None
    if raw.get("n_routed_experts") or raw.get("num_local_experts") or raw.get("num_experts"):
        moe = MoEProfile(
            num_experts=int(raw.get("n_routed_experts") or raw.get("num_local_experts") or raw["num_experts"]),
            experts_per_token=int(_need(raw, "num_experts_per_tok", where)),
            expert_intermediate_size=int(raw.get("moe_intermediate_size") or _need(raw, "intermediate_size", where)),
            num_shared_experts=int(raw.get("n_shared_experts") or 0),
            num_dense_layers=int(raw.get("first_k_dense_replace") or 0),
        )
    mla = None
    if raw.get("kv_lora_rank"):
        mla = MLAProfile(int(raw.get("q_lora_rank") or hidden), int(raw["kv_lora_rank"]),
                         int(_need(raw, "qk_nope_head_dim", where)), int(_need(raw, "qk_rope_head_dim", where)),
                         int(_need(raw, "v_head_dim", where)))
    profile = ModelProfile(
        num_layers=int(_need(raw, "num_hidden_layers", where)),
        hidden_size=hidden,
        intermediate_size=int(_need(raw, "intermediate_size", where)),
        num_heads=heads,
        num_kv_heads=int(raw.get("num_key_value_heads") or heads),
        head_dim=int(raw.get("head_dim") or (mla.v_head_dim if mla else hidden // heads)),
        vocab_size=int(_need(raw, "vocab_size", where)),
        weight_bytes_per_param=weights,
        kv_bytes_per_element=kv_bytes or element,
        moe=moe,
        mla=mla,
        activation_bytes=element,
    )
    context = int(raw.get("max_position_embeddings", 4096))
    scaling = raw.get("rope_scaling") or {}
    if scaling.get("type", scaling.get("rope_type")) == "yarn":
        context = max(context, int(scaling.get("original_max_position_embeddings", context) * scaling.get("factor", 1)))
    return ModelSpec(name, profile, context)


def load_model(name_or_path: str) -> ModelSpec:
    """A published model by name (``llama-3-8b``...), or a ``config.json`` file or directory."""
    if name_or_path in MODEL_CONFIGS:
        return model_from_config(MODEL_CONFIGS[name_or_path], name_or_path)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ProfileError(f"model {name_or_path!r}: not one of {', '.join(MODEL_CONFIGS)} and no config.json there")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ProfileError(f"{path}: not valid JSON ({error})") from None
    return model_from_config(raw, str(path.parent.name if path.name == "config.json" else path))


def accelerator(name: str) -> HardwareProfile:
    """A preset accelerator with the assumed factors."""
    if name not in HARDWARE_PRESETS:
        raise ProfileError(f"hardware {name!r}: known presets are {', '.join(HARDWARE_PRESETS)} "
                           "(or a JSON file from `edgecloud sim calibrate`)")
    return HARDWARE_PRESETS[name].calibrated(**ACCELERATOR_FACTORS)


@dataclass(frozen=True)
class CalibratedProfile:
    """What ``edgecloud sim calibrate`` writes: the fitted hardware, the model it was fitted on,
    and how well the fit explains the measured steps."""

    hardware: HardwareProfile
    model: str
    threads: int
    dtype: str
    fit_median_abs_error: float
    fit_p90_abs_error: float
    num_steps: int
    transfer_bandwidth: float = 0.0  # KV bytes/s measured through the cluster's zmq connector
    frontend_s: float = 0.0  # a client's request -> in the engine (HTTP, tokenize, route, send)
    delivery_s: float = 0.0  # a token sampled in the engine -> its chunk at the client
    engine: dict[str, Any] = field(default_factory=dict)  # the EngineConfig calibrated (its fields)
    cpu: str = ""
    load_average: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and the end
    # a served step's time beyond the step itself: the core's mean loop between steps that continue
    # each other (the served probe's step logs); already in ``hardware.step_overhead_s`` (and ``lone_decode``'s)
    serving_step_s: float = 0.0
    # Steps of one decoding sequence, fitted on their own profiled steps: the engine runs them in one
    # C call (llm/quant/decode_stack.py), not through the modules a batch takes (None: priced as any step)
    lone_decode: HardwareProfile | None = None
    # |predicted / measured - 1| per step class of the profile: class -> [median, p90, steps]
    fit_errors: dict[str, list[float]] = field(default_factory=dict)
    serving_instances: int = 1  # instances of the cluster the serving path was measured on (0: not measured)
    # the served probe (``calibrate.measure_served_steps``): measured / in-process-fitted step time per
    # path, already applied to ``hardware`` and ``lone_decode``
    served_factors: dict[str, float] | None = None
    # the served probe's spread: path -> 100 quantiles of a step's measured time over its mean price
    step_noise: dict[str, list[float]] | None = None

    def engine_config(self) -> EngineConfig:
        """The engine options the factors were fitted for (real instances of a comparison use them)."""
        from edgecloud.llm.config import EngineConfig

        return EngineConfig(**self.engine)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CalibratedProfile:
        fields = dict(raw)
        fields["hardware"] = HardwareProfile(**raw["hardware"])
        if raw.get("lone_decode") is not None:
            fields["lone_decode"] = HardwareProfile(**raw["lone_decode"])
        fields["load_average"] = tuple(raw.get("load_average", (0.0, 0.0)))
        return cls(**fields)


def load_hardware(name_or_path: str) -> tuple[HardwareProfile, CalibratedProfile | None]:
    """A preset accelerator by name, or a calibrated profile (JSON file from ``sim calibrate``)."""
    if name_or_path in HARDWARE_PRESETS:
        return accelerator(name_or_path), None
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise ProfileError(f"hardware {name_or_path!r}: not one of {', '.join(HARDWARE_PRESETS)} and no such file")
    try:
        calibrated = CalibratedProfile.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, KeyError) as error:
        raise ProfileError(f"{path}: not a calibrated profile from `edgecloud sim calibrate` ({error})") from None
    return calibrated.hardware, calibrated


def kv_blocks(hardware: HardwareProfile, model: ModelSpec, parallel: Parallelism, block_size: int,
              memory_utilization: float = 0.9) -> int:
    """KV blocks an instance holds: the devices' memory at ``memory_utilization`` less the weights
    (as vLLM's ``gpu_memory_utilization``)."""
    memory = hardware.memory_bytes * parallel.devices * memory_utilization
    free = memory - model.profile.weight_bytes
    blocks = int(free // (model.profile.kv_bytes_per_token * block_size))
    if blocks < 1:
        raise ProfileError(
            f"{model.name} does not fit on {parallel.devices} x {hardware.name}: weights "
            f"{model.profile.weight_bytes / 1e9:.0f} GB, memory {memory / 1e9:.0f} GB at {memory_utilization:.0%}"
        )
    return blocks


def perf_model(hardware: HardwareProfile, model: ModelSpec, devices: int = 1) -> PerfModel:
    return PerfModel(hardware, model.profile, Parallelism(devices))


LONE_PATH, BATCHED_PATH = "lone decode", "batched"  # the engine's two step paths (``LoneDecodePerfModel``)


def is_lone_decode(shapes: Sequence[StepShape]) -> bool:
    """A step of one sequence computing one token with a context before it: the step the engine's
    one-call decoder takes (``ModelRunner``: one input token and no prefill). A prompt's last token
    computed alone (the rest cached) has the same shape but runs the module path; the shape cannot
    tell the two apart, and it is priced as a decode."""
    return len(shapes) == 1 and shapes[0].num_new_tokens == 1 and shapes[0].context_len > 1


class LoneDecodePerfModel(PerfModel):
    """The cost model of the local engine, whose steps take two paths: a step of one decoding
    sequence runs all its layers and the LM head in one C call (``llm/quant/decode_stack.py``),
    every other step runs the model's modules. Each path has its own fitted factors (``sim
    calibrate`` fits them on their own profiled steps): ``lone`` prices one-sequence decode steps,
    the base model everything else (``batched``, a plain ``PerfModel`` of the same factors)."""

    def __init__(self, hardware: HardwareProfile, model: ModelProfile, lone: HardwareProfile,
                 parallel: Parallelism | None = None, noise: dict[str, list[float]] | None = None,
                 seed: int = 0) -> None:
        parallel = parallel or Parallelism()
        super().__init__(hardware, model, parallel)
        self.lone = PerfModel(lone, model, parallel)
        self.batched = PerfModel(hardware, model, parallel)
        # With ``noise`` (path -> multipliers of a served step over its mean price: the served probe's
        # quantiles), each step's price is multiplied by one drawn at random (seeded): steps on a shared
        # host vary, and latency percentiles feel the spread, not only the mean. None: exact prices.
        self.noise = noise
        self._rng = random.Random(seed)

    def step_cost(self, batch: Iterable[StepShape], moe_imbalance: float = 1.0,
                  dispatch_imbalance: float = 1.0) -> StepCost:
        shapes = list(batch)
        lone = is_lone_decode(shapes)
        cost = (self.lone if lone else self.batched).step_cost(shapes, moe_imbalance, dispatch_imbalance)
        if self.noise:
            m = self._rng.choice(self.noise[LONE_PATH if lone else BATCHED_PATH])
            cost = StepCost(*(getattr(cost, f.name) * m for f in fields(StepCost)))
        return cost


def local_twin(config: EngineConfig, hardware: HardwareProfile, lone_decode: HardwareProfile | None = None,
               noise: dict[str, list[float]] | None = None) -> tuple[PerfModel, SimEngineConfig]:
    """The cost model and scheduling options of a simulated instance that stands for a real local
    instance running ``config``: the same model (read from its config.json), KV blocks (from the
    same memory budget, as the engine computes them), context limit and batch limits. With
    ``lone_decode`` (a calibrated profile's), one-sequence decode steps are priced by it."""
    import torch

    from edgecloud.llm.config import ModelConfig
    from edgecloud.llm.engine_core import max_model_len_for
    from edgecloud.llm.model_runner import kv_bytes_per_block
    from edgecloud.llm.model_source import resolve_model
    from edgecloud.sim.instance import SimEngineConfig

    source = resolve_model(config.model)
    mc = ModelConfig.from_file(source.directory / "config.json")
    dtype = config.resolve_dtype(mc)
    element = torch.tensor([], dtype=dtype).element_size()
    num_blocks = int(config.kv_cache_memory_mb * 2**20 // kv_bytes_per_block(mc, config.block_size, dtype))
    sim_config = SimEngineConfig(
        num_blocks=num_blocks, max_model_len=max_model_len_for(config, mc), block_size=config.block_size,
        max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
        enable_prefix_caching=config.enable_prefix_caching,
    )
    profile = ModelProfile.from_config(mc, element)
    if lone_decode is not None:
        return LoneDecodePerfModel(hardware, profile, lone_decode, noise=noise), sim_config
    return PerfModel(hardware, profile), sim_config
