"""Model configuration read from an HF ``config.json``, and the engine's own options.

Published checkpoints come in two layouts: transformers 4 (``rope_theta``, ``rope_scaling``,
``torch_dtype``) and transformers 5 (``rope_parameters``, ``dtype``). ``ModelConfig.from_dict``
reads both into one shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgecloud.llm.errors import InvalidRequestError, ModelLoadError

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "MixtralForCausalLM": "mixtral",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "DeepseekV3ForCausalLM": "deepseek_v3",
}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


ROPE_TYPES = ("default", "linear", "llama3", "yarn", "dynamic", "longrope")


@dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters, in transformers' names (``rope_parameters`` / ``rope_scaling``).

    ``original_max_position_embeddings`` is the pre-training context (transformers' default: the
    config's ``max_position_embeddings``); ``factor`` how far it was stretched. YaRN's fields are
    ``beta_fast``, ``beta_slow``, ``mscale``, ``mscale_all_dim``, ``attention_factor`` (``None``:
    derived from the others) and ``truncate``; LongRoPE's are ``short_factor`` and ``long_factor``.
    """

    theta: float = 10000.0
    rope_type: str = "default"  # one of ROPE_TYPES
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float | None = None
    mscale_all_dim: float | None = None
    attention_factor: float | None = None
    truncate: bool = True
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()

    def context_length(self, max_position_embeddings: int) -> int:
        """The longest context the scaled embedding is meant for. Linear and dynamic scaling keep
        the pre-training ``max_position_embeddings`` in the config and stretch it by ``factor``;
        YaRN stretches ``original_max_position_embeddings``; llama3 and LongRoPE configs already
        state the stretched length."""
        if self.rope_type in ("linear", "dynamic"):
            return int(max_position_embeddings * self.factor)
        if self.rope_type == "yarn":
            return max(max_position_embeddings, int(self.original_max_position_embeddings * self.factor))
        return max_position_embeddings


@dataclass(frozen=True)
class MoEConfig:
    """The mixture-of-experts MLPs of a model (Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V3).

    ``layers``: the decoder layers whose MLP is an MoE block (the others keep the dense MLP of
    ``intermediate_size``). Routing: ``softmax`` over the router logits then top-k (Mixtral, Qwen),
    or ``sigmoid`` scores with ``e_score_correction_bias`` added for the choice only, top-``topk_groups``
    of ``num_groups`` groups first (each scored by its best two experts), then top-k, the chosen
    scores normalised and multiplied by ``routed_scaling_factor`` (DeepSeek-V3). ``router_fp32``:
    the router's matmul runs in float32 (DeepSeek-V3); ``weights_in_model_dtype``: the routing
    weights are cast back to the activations' dtype before they scale the experts (Qwen).
    Shared experts run on every token: ``shared_intermediate_size`` wide, scaled by a sigmoid gate
    (Qwen2-MoE) when ``shared_expert_gate``."""

    num_experts: int
    top_k: int
    intermediate_size: int
    layers: tuple[int, ...]
    scoring: str = "softmax"
    norm_topk_prob: bool = True
    router_fp32: bool = False
    weights_in_model_dtype: bool = False
    num_groups: int = 1
    topk_groups: int = 1
    routed_scaling_factor: float = 1.0
    score_correction_bias: bool = False
    shared_intermediate_size: int = 0
    shared_expert_gate: bool = False


@dataclass(frozen=True)
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2/V3): queries through a low-rank ``q_lora_rank``
    bottleneck (or one projection when None); keys and values from one shared latent of
    ``kv_lora_rank`` plus a rotary key of ``qk_rope_head_dim`` shared by all heads, which is what
    the cache keeps. Per head, keys have ``qk_nope_head_dim + qk_rope_head_dim`` dimensions and
    values ``v_head_dim``. ``rope_interleave``: the rotary dimensions are stored as interleaved
    pairs (DeepSeek's checkpoints)."""

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    rope_interleave: bool = True


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig
    tie_word_embeddings: bool
    qkv_bias: bool  # biases on the q/k/v projections
    o_bias: bool  # a bias on the output projection
    qk_norm: bool  # RMSNorm of each head's q and k before rotary (Qwen3)
    mlp_bias: bool
    hidden_act: str
    sliding_window: int | None
    torch_dtype: str | None
    bos_token_id: int | None
    eos_token_ids: tuple[int, ...]
    moe: MoEConfig | None = None  # mixture-of-experts MLPs
    mla: MLAConfig | None = None  # multi-head latent attention instead of GQA

    @classmethod
    def from_file(cls, path: Path) -> ModelConfig:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: missing (every model directory needs config.json)") from None
        except json.JSONDecodeError as exc:
            raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
        archs = raw.get("architectures") or []
        arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
        if arch is None:
            raise ModelLoadError(
                f"{source}: architectures={archs!r} is not supported; "
                f"supported: {sorted(SUPPORTED_ARCHITECTURES)}"
            )
        model_type = SUPPORTED_ARCHITECTURES[arch]

        def need(key: str) -> Any:
            if key not in raw:
                raise ModelLoadError(f"{source}: missing required field {key!r}")
            return raw[key]

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        kv_heads = int(raw.get("num_key_value_heads") or heads)
        if heads % kv_heads:
            raise ModelLoadError(
                f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
            )
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        sliding = raw.get("sliding_window") if raw.get("use_sliding_window", True) else None
        # Llama's attention_bias covers q/k/v and o; Qwen2 has q/k/v biases and no o bias.
        attention_bias = bool(raw.get("attention_bias", model_type == "qwen2"))
        if model_type == "qwen2_moe":  # transformers 5 names it qkv_bias; Qwen2-MoE always had them
            attention_bias = bool(raw.get("qkv_bias", True))
        mla = _read_mla(raw, source) if model_type == "deepseek_v3" else None
        return cls(
            architecture=arch,
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_hidden_layers=int(need("num_hidden_layers")),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            # MLA's rotary part is the only per-head dimension the rotary table needs.
            head_dim=mla.qk_rope_head_dim if mla else int(raw.get("head_dim") or hidden // heads),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            rope=_read_rope(raw, source),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", model_type == "qwen2")),
            qkv_bias=attention_bias,
            o_bias=attention_bias and model_type not in ("qwen2", "qwen2_moe"),
            qk_norm=model_type in ("qwen3", "qwen3_moe"),
            mlp_bias=bool(raw.get("mlp_bias", False)),
            hidden_act=str(raw.get("hidden_act", "silu")),
            sliding_window=int(sliding) if sliding else None,
            torch_dtype=raw.get("dtype") or raw.get("torch_dtype"),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
            moe=_read_moe(raw, model_type, source),
            mla=mla,
        )


def _read_moe(raw: dict[str, Any], model_type: str, source: str) -> MoEConfig | None:
    """The MoE fields of Mixtral, Qwen2-MoE, Qwen3-MoE and DeepSeek-V3 configs (transformers 4
    and 5 names), or None for a dense model."""
    if model_type not in ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3"):
        return None

    def positive(*keys: str) -> int:
        for key in keys:
            value = raw.get(key)
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ModelLoadError(f"{source}: {key} must be a positive integer, got {value!r}")
                return value
        raise ModelLoadError(f"{source}: missing required field {keys[0]!r}")

    layers_total = int(raw.get("num_hidden_layers", 0))
    top_k = positive("num_experts_per_tok")
    if model_type == "mixtral":
        experts = positive("num_local_experts")
        moe = MoEConfig(experts, top_k, positive("intermediate_size"), tuple(range(layers_total)))
    elif model_type == "deepseek_v3":
        experts = positive("n_routed_experts", "num_local_experts")
        first_dense = int(raw.get("first_k_dense_replace", 0))
        groups, topk_groups = positive("n_group"), positive("topk_group")
        if experts % groups or topk_groups > groups:
            raise ModelLoadError(
                f"{source}: n_routed_experts={experts} must split into n_group={groups} groups, "
                f"and topk_group={topk_groups} must be <= n_group"
            )
        scoring = raw.get("scoring_func", "sigmoid")
        if scoring != "sigmoid":
            raise ModelLoadError(f"{source}: scoring_func {scoring!r} is not supported (DeepSeek-V3 uses sigmoid)")
        moe = MoEConfig(
            experts, top_k, positive("moe_intermediate_size"), tuple(range(first_dense, layers_total)),
            scoring="sigmoid", norm_topk_prob=bool(raw.get("norm_topk_prob", True)), router_fp32=True,
            num_groups=groups, topk_groups=topk_groups,
            routed_scaling_factor=float(raw.get("routed_scaling_factor", 1.0)), score_correction_bias=True,
            shared_intermediate_size=positive("moe_intermediate_size") * int(raw.get("n_shared_experts") or 0),
        )
    else:
        experts = positive("num_experts", "num_local_experts")
        only_dense = set(raw.get("mlp_only_layers") or ())
        step = int(raw.get("decoder_sparse_step", 1))
        layers = tuple(i for i in range(layers_total) if i not in only_dense and (i + 1) % step == 0)
        shared = int(raw.get("shared_expert_intermediate_size") or 0) if model_type == "qwen2_moe" else 0
        moe = MoEConfig(
            experts, top_k, positive("moe_intermediate_size"), layers,
            norm_topk_prob=bool(raw.get("norm_topk_prob", False)), weights_in_model_dtype=True,
            shared_intermediate_size=shared, shared_expert_gate=shared > 0,
        )
    if moe.top_k > moe.num_experts:
        raise ModelLoadError(f"{source}: num_experts_per_tok={top_k} exceeds the {experts} experts")
    return moe


def _read_mla(raw: dict[str, Any], source: str) -> MLAConfig:
    def need(key: str) -> int:
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelLoadError(f"{source}: {key} must be a positive integer, got {value!r}")
        return value

    q_rank = raw.get("q_lora_rank")
    return MLAConfig(
        q_lora_rank=None if q_rank is None else need("q_lora_rank"),
        kv_lora_rank=need("kv_lora_rank"),
        qk_nope_head_dim=need("qk_nope_head_dim"),
        qk_rope_head_dim=need("qk_rope_head_dim"),
        v_head_dim=need("v_head_dim"),
        rope_interleave=bool(raw.get("rope_interleave", True)),
    )


def _read_rope(raw: dict[str, Any], source: str) -> RopeConfig:
    # transformers 5 keeps theta inside rope_parameters; transformers 4 has rope_theta + rope_scaling.
    key = "rope_parameters" if raw.get("rope_parameters") else "rope_scaling"
    params = dict(raw.get(key) or {})
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    rope_type = {"su": "longrope"}.get(rope_type, rope_type)  # Phi-3's first name for LongRoPE
    if rope_type not in ROPE_TYPES:
        raise ModelLoadError(
            f"{source}: {key}.rope_type {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
        )
    if float(params.get("partial_rotary_factor", raw.get("partial_rotary_factor", 1.0))) != 1.0:
        raise ModelLoadError(f"{source}: partial_rotary_factor other than 1.0 is not supported")
    max_positions = int(raw.get("max_position_embeddings", 2048))
    # As transformers: a top-level original_max_position_embeddings (Phi-3) wins, then the one in
    # the rope dict, then max_position_embeddings itself.
    original = int(raw.get("original_max_position_embeddings")
                   or params.get("original_max_position_embeddings") or max_positions)

    def number(name: str, default: float | None, minimum: float | None = None) -> float | None:
        value = params.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ModelLoadError(f"{source}: {key}.{name} must be a number, got {value!r}")
        if minimum is not None and value < minimum:
            raise ModelLoadError(f"{source}: {key}.{name} must be >= {minimum}, got {value!r}")
        return float(value)

    needs_factor = rope_type in ("linear", "dynamic", "llama3")
    if needs_factor and params.get("factor") is None:
        raise ModelLoadError(f"{source}: {key}.factor is required for rope_type {rope_type!r}")
    # YaRN and LongRoPE configs may leave factor out and state the stretch as a length ratio.
    factor = number("factor", max_positions / original, minimum=1.0 if needs_factor else None)
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    if rope_type == "longrope":
        for name in ("short_factor", "long_factor"):
            value = params.get(name)
            if not isinstance(value, list) or not all(isinstance(v, int | float) for v in value):
                raise ModelLoadError(f"{source}: {key}.{name} must be a list of numbers, got {value!r}")
        short_factor = tuple(float(v) for v in params["short_factor"])
        long_factor = tuple(float(v) for v in params["long_factor"])
    return RopeConfig(
        theta=theta,
        rope_type=rope_type,
        factor=float(factor or 1.0),
        low_freq_factor=float(number("low_freq_factor", 1.0) or 1.0),
        high_freq_factor=float(number("high_freq_factor", 4.0) or 4.0),
        original_max_position_embeddings=original,
        beta_fast=float(number("beta_fast", None) or 32.0),
        beta_slow=float(number("beta_slow", None) or 1.0),
        mscale=number("mscale", None),
        mscale_all_dim=number("mscale_all_dim", None),
        attention_factor=number("attention_factor", None, minimum=0.0),
        truncate=bool(params.get("truncate", True)),
        short_factor=short_factor,
        long_factor=long_factor,
    )


# generation_config.json fields that are sampling defaults for requests that leave them out.
GENERATION_DEFAULT_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def read_generation_defaults(model_dir: Path) -> dict[str, float]:
    """The model's recommended sampling settings from ``generation_config.json`` (as vLLM applies
    them), or none when the file is absent or asks for greedy decoding."""
    path = model_dir / "generation_config.json"
    if not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None
    if raw.get("do_sample") is False:
        return {}
    return {k: raw[k] for k in GENERATION_DEFAULT_FIELDS if isinstance(raw.get(k), int | float)}


@dataclass
class EngineConfig:
    """Engine options. ``model=None`` serves the default model (SmolLM2-135M-Instruct); ``"demo"``
    the embedded fortune demo model; ``chat_template`` overrides the model's (a file, the template
    text, or the name of one of the model's templates)."""

    model: str | None = None
    dtype: str = "auto"
    device: str = "cpu"
    block_size: int = 16
    kv_cache_memory_mb: float = 512.0
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    # Tokens of ``flex`` work one step may carry (None: max_num_seqs). A step that runs flex work
    # then costs about one decode step of a full batch, so an online request arriving during it
    # waits at most that long; raise it for engines that serve offline work only (faster prefill).
    flex_max_batched_tokens: int | None = None
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    attention_backend: str = "paged"
    seed: int = 0
    num_threads: int | None = None
    chat_template: str | None = None
    # Weight-only quantization of the decoder's projections and LM head: int8 (GGUF Q8_0 blocks) or
    # int4 (Q4_1 blocks), read block for block from the GGUF file when the model came from one.
    quantization: str = "none"
    # OmniAttn (issue #21): a layer pattern file (``edgecloud omniattn search``) whose sink_window
    # layers keep only a sink and a recent window while decoding; their pool gets this fraction of
    # a full layer's blocks (OmniAttn's fifth), at least one longest prompt.
    kv_layer_pattern: str | None = None
    kv_compressed_pool_fraction: float = 0.2
    # Multi-LoRA (docs/lora.md): adapters served beside the base model. ``lora_modules``: (name, PEFT
    # directory) pairs loaded at start (and again when the core restarts); any enables LoRA.
    # ``max_loras``: device slots, and the most distinct adapters among running requests;
    # ``max_lora_rank``: the largest rank a slot holds; ``max_cpu_loras``: adapters kept parsed in
    # host memory (the rest are read from disk again when needed). ``lora_async_loads``: such a
    # read runs in a loader thread while the steps go on, and only the requests of that adapter
    # wait for it (S-LoRA); off, the step that needs the adapter reads it and every request waits.
    enable_lora: bool = False
    lora_modules: tuple[tuple[str, str], ...] = ()
    max_loras: int = 4
    max_lora_rank: int = 16
    max_cpu_loras: int = 32
    lora_async_loads: bool = True

    def __post_init__(self) -> None:
        def bad(param: str, allowed: str) -> InvalidRequestError:
            return InvalidRequestError(f"{param} must be {allowed}, got {getattr(self, param)!r}", param)

        if self.dtype not in ("auto", *_DTYPES):
            raise bad("dtype", f"one of auto, {', '.join(_DTYPES)}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise bad("device", "cpu or cuda[:N]")
        if self.block_size not in (1, 2, 4, 8, 16, 32, 64, 128, 256):
            raise bad("block_size", "a power of two in [1, 256]")
        if self.kv_cache_memory_mb <= 0:
            raise bad("kv_cache_memory_mb", "> 0")
        if self.max_num_seqs < 1:
            raise bad("max_num_seqs", ">= 1")
        if self.max_num_batched_tokens < 1:
            raise bad("max_num_batched_tokens", ">= 1")
        if self.flex_max_batched_tokens is not None and self.flex_max_batched_tokens < 1:
            raise bad("flex_max_batched_tokens", ">= 1")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise bad("max_model_len", ">= 1")
        if self.quantization not in ("none", "int8", "int4"):
            raise bad("quantization", "one of none, int8, int4")
        if not 0 < self.kv_compressed_pool_fraction <= 1:
            raise bad("kv_compressed_pool_fraction", "in (0, 1]")
        if self.max_loras < 1:
            raise bad("max_loras", ">= 1")
        if not 1 <= self.max_lora_rank <= 512:
            raise bad("max_lora_rank", "in [1, 512]")
        if self.max_cpu_loras < self.max_loras:
            raise bad("max_cpu_loras", f">= max_loras ({self.max_loras})")
        self.lora_modules = tuple((str(n), str(p)) for n, p in self.lora_modules)
        names = [n for n, _ in self.lora_modules]
        if len(set(names)) != len(names):
            raise bad("lora_modules", "pairs with distinct names")
        if self.lora_modules:
            self.enable_lora = True

    def resolve_dtype(self, model: ModelConfig) -> torch.dtype:
        if self.dtype != "auto":
            return _DTYPES[self.dtype]
        if self.device == "cpu":
            # bf16 is several times faster than fp32 where the CPU has bf16 matrix units (AMX);
            # elsewhere bf16 matmuls are emulated and slower, so auto means fp32 there.
            return torch.bfloat16 if cpu_has_bf16_matrix_units() else torch.float32
        return torch.float16 if model.torch_dtype == "float16" else torch.bfloat16


def cpu_has_bf16_matrix_units() -> bool:
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())
