"""Reading PEFT LoRA adapters (``adapter_config.json`` + ``adapter_model.safetensors``).

A LoRA adapter adds ``scale · B (A x)`` to a projection's output, with ``A: [r, in]``,
``B: [out, r]`` and ``scale = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA, as PEFT's
``LoraLayer.update_layer``). PEFT stores one pair per checkpoint projection (``q_proj``, ...,
``down_proj``); the engine fuses q/k/v into ``qkv_proj`` and gate/up into ``gate_up_proj``, so each
pair is mapped to a fused module and the slice of its output (``FUSED_SLICES``).

Every check happens here, before an adapter reaches the engine: the file exists and parses, the
tensors' shapes fit this base model (an adapter trained for another base model does not), every
rank is at most the engine's ``max_lora_rank``, and the options the engine does not implement
(DoRA, trained biases, ``modules_to_save``, embedding or LM-head targets) are refused by name.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgecloud.llm.config import ModelConfig
from edgecloud.llm.errors import InvalidRequestError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"

# checkpoint projection -> (the engine's fused module, index of its output slice)
FUSED_SLICES: dict[str, tuple[str, int]] = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "o_proj": ("o_proj", 0),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
    "down_proj": ("down_proj", 0),
}
FUSED_MODULES = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")

_TENSOR_NAME = re.compile(
    r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(" + "|".join(FUSED_SLICES) + r")\.lora_([AB])\.weight$"
)


class LoRAAdapterError(InvalidRequestError):
    """An adapter that cannot be served; ``param`` names the request field at fault."""


def projection_shapes(mc: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in features, out features) of each checkpoint projection of one decoder layer."""
    q, kv, h, i = mc.num_attention_heads * mc.head_dim, mc.num_key_value_heads * mc.head_dim, mc.hidden_size, \
        mc.intermediate_size
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h), "gate_proj": (h, i),
            "up_proj": (h, i), "down_proj": (i, h)}


def fused_slices(mc: ModelConfig) -> dict[str, list[tuple[int, int]]]:
    """Per fused module, ``(out offset, out length)`` of each slice, in slice order."""
    shapes = projection_shapes(mc)
    slices: dict[str, list[tuple[int, int]]] = {m: [] for m in FUSED_MODULES}
    for proj, (module, _) in FUSED_SLICES.items():  # dict order is slice order within a module
        offset = sum(length for _, length in slices[module])
        slices[module].append((offset, shapes[proj][1]))
    return slices


@dataclass
class LoRAPair:
    """One projection's low-rank update: ``scale · B (A x)``."""

    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    scale: float

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass
class LoRAAdapter:
    """A parsed adapter, in host memory: ``pairs[(layer, projection)]``."""

    name: str
    path: str | None
    rank: int  # the largest rank of any projection
    lora_alpha: float
    use_rslora: bool
    base_model: str | None
    target_modules: tuple[str, ...]
    pairs: dict[tuple[int, str], LoRAPair]
    digest: str  # sha256 of the config and weights: two loads of the same files compare equal
    config: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def num_bytes(self) -> int:
        return sum(p.a.numel() * p.a.element_size() + p.b.numel() * p.b.element_size() for p in self.pairs.values())

    def tensors(self) -> dict[str, torch.Tensor]:
        """PEFT's tensor names, for writing the adapter back out (or sending it to a peer)."""
        out = {}
        for (layer, proj), pair in self.pairs.items():
            part = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{part}.{proj}"
            out[f"{prefix}.lora_A.weight"] = pair.a
            out[f"{prefix}.lora_B.weight"] = pair.b
        return out


def _pattern_value(patterns: dict[str, Any], module_name: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup (``peft.utils.other.get_pattern_key``)."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", module_name):
            return patterns[key]
    return default


def read_adapter_config(directory: Path, name: str) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not directory.is_dir():
        raise LoRAAdapterError(f"LoRA adapter {name!r}: {directory} is not a directory", "lora_path")
    if not path.is_file():
        raise LoRAAdapterError(f"LoRA adapter {name!r}: {path} is missing (a PEFT adapter directory has "
                               f"{CONFIG_FILE} and {WEIGHTS_FILE})", "lora_path")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LoRAAdapterError(f"LoRA adapter {name!r}: {path} is not valid JSON ({exc})", "lora_path") from None
    if not isinstance(config, dict):
        raise LoRAAdapterError(f"LoRA adapter {name!r}: {path} must hold a JSON object", "lora_path")
    return config


def check_adapter_config(config: dict[str, Any], name: str) -> None:
    """Refuses what the engine does not implement, naming the option."""
    def bad(message: str) -> LoRAAdapterError:
        return LoRAAdapterError(f"LoRA adapter {name!r}: {message}", "lora_path")

    peft_type = config.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise bad(f"peft_type is {peft_type!r}; only LORA adapters are supported")
    if config.get("use_dora"):
        raise bad("use_dora=true (DoRA) is not supported")
    if config.get("bias", "none") != "none":
        raise bad(f"bias={config['bias']!r} is not supported (only 'none')")
    if config.get("modules_to_save"):
        raise bad(f"modules_to_save={config['modules_to_save']!r} is not supported")
    if config.get("fan_in_fan_out"):
        raise bad("fan_in_fan_out=true is not supported (Conv1D base layers)")
    for key in ("r", "lora_alpha"):
        value = config.get(key, 8)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise bad(f"{key} must be a positive number, got {value!r}")


def _all_finite(t: torch.Tensor) -> bool:
    """No NaN or infinity in ``t``. A finite sum (one pass, no mask tensor) proves it, as any NaN or
    infinity makes the sum NaN or infinite; a sum that overflows from finite values is settled
    by the element-wise test."""
    total = t.sum(dtype=torch.float64) if t.is_floating_point() else None
    if total is not None and math.isfinite(total.item()):
        return True
    return bool(torch.isfinite(t).all())


def load_adapter(
    name: str, directory: str | Path, mc: ModelConfig, max_rank: int, dtype: torch.dtype = torch.float32
) -> LoRAAdapter:
    """Reads and checks a PEFT adapter directory for the model ``mc``; raises ``LoRAAdapterError``."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    directory = Path(directory).expanduser()
    config = read_adapter_config(directory, name)
    check_adapter_config(config, name)
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        other = " (adapter_model.bin is a pickle: save the adapter with safe_serialization=True)" if (
            directory / "adapter_model.bin").exists() else ""
        raise LoRAAdapterError(f"LoRA adapter {name!r}: {weights_path} is missing{other}", "lora_path")
    data = weights_path.read_bytes()
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise LoRAAdapterError(f"LoRA adapter {name!r}: {weights_path} is not a readable safetensors file "
                               f"({exc})", "lora_path") from None
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode() + data).hexdigest()
    return adapter_from_tensors(name, str(directory), config, tensors, mc, max_rank, dtype, digest)


def adapter_from_tensors(
    name: str, path: str | None, config: dict[str, Any], tensors: dict[str, torch.Tensor], mc: ModelConfig,
    max_rank: int, dtype: torch.dtype, digest: str,
) -> LoRAAdapter:
    """Checks PEFT tensors against the model and pairs them (the common path of a file and a peer)."""
    check_adapter_config(config, name)
    base = config.get("base_model_name_or_path")
    trained_for = f" (trained for {base!r})" if base else ""

    def bad(message: str) -> LoRAAdapterError:
        return LoRAAdapterError(f"LoRA adapter {name!r}{trained_for}: {message}", "lora_path")

    halves: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for tensor_name, tensor in tensors.items():
        match = _TENSOR_NAME.search(tensor_name)
        if match is None:
            if "lora_" in tensor_name or tensor_name.endswith(("weight", "bias")):
                raise bad(f"tensor {tensor_name} targets a module the engine cannot adapt (LoRA applies to "
                          f"{', '.join(FUSED_SLICES)} of the decoder layers)")
            continue
        layer, proj, half = int(match.group(1)), match.group(2), match.group(3)
        halves.setdefault((layer, proj), {})[half] = tensor
    if not halves:
        raise bad("holds no LoRA tensors (expected names like ...layers.0.self_attn.q_proj.lora_A.weight)")
    shapes = projection_shapes(mc)
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    default_alpha = float(config.get("lora_alpha", 8))
    rslora = bool(config.get("use_rslora", False))
    pairs: dict[tuple[int, str], LoRAPair] = {}
    for (layer, proj), parts in sorted(halves.items()):
        where = f"layers.{layer}.{proj}"
        if "A" not in parts or "B" not in parts:
            raise bad(f"{where} has lora_{'A' if 'A' not in parts else 'B'} missing")
        if layer >= mc.num_hidden_layers:
            raise bad(f"{where}: this model has {mc.num_hidden_layers} layers; the adapter is for another base model")
        a, b = parts["A"], parts["B"]
        fan_in, fan_out = shapes[proj]
        rank = a.shape[0] if a.dim() == 2 else -1
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != fan_in or b.shape != (fan_out, rank):
            raise bad(f"{where}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit this model, which "
                      f"needs ({rank}, {fan_in}) and ({fan_out}, {rank}): the adapter is for another base model")
        if rank > max_rank:
            raise LoRAAdapterError(f"LoRA adapter {name!r}: {where} has rank {rank}, above this engine's "
                                   f"max_lora_rank={max_rank} (raise --max-lora-rank)", "lora_path")
        module_name = f"model.layers.{layer}.{'self_attn' if proj[0] in 'qkvo' else 'mlp'}.{proj}"
        declared = int(_pattern_value(rank_pattern, module_name, config.get("r", rank)))
        if declared != rank:
            raise bad(f"{where}: lora_A has rank {rank} but the config says r={declared}")
        alpha = float(_pattern_value(alpha_pattern, module_name, default_alpha))
        scale = alpha / math.sqrt(rank) if rslora else alpha / rank
        if not (_all_finite(a) and _all_finite(b)):
            raise bad(f"{where} holds NaN or infinite values")
        pairs[(layer, proj)] = LoRAPair(a.to(dtype).contiguous(), b.to(dtype).contiguous(), scale)
    targets = tuple(sorted({proj for _, proj in pairs}, key=list(FUSED_SLICES).index))
    return LoRAAdapter(
        name=name, path=path, rank=max(p.rank for p in pairs.values()), lora_alpha=default_alpha, use_rslora=rslora,
        base_model=base, target_modules=targets, pairs=pairs, digest=digest, config=config,
    )
