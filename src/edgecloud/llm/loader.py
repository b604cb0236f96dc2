"""Loading HF-format checkpoints from a local directory into the engine's model.

Reads ``config.json`` and ``*.safetensors`` (single file or sharded with an index). The engine's
model fuses q/k/v and gate/up projections, so checkpoint tensors are concatenated on load. Every
failure names the file or tensor at fault.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from edgecloud.llm.config import ModelConfig
from edgecloud.llm.errors import ModelLoadError
from edgecloud.llm.models import MODEL_CLASSES

_FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise ModelLoadError(f"{index}: not a valid safetensors index ({exc})") from None
        files = [model_dir / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise ModelLoadError(f"{index}: names shards that are missing: {missing}")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{model_dir}: no *.safetensors weights found")
    return files


def read_checkpoint(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for path in safetensors_files(model_dir):
        try:
            tensors.update(load_file(str(path)))
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{path}: cannot read safetensors ({exc})") from None
    return tensors


def _fuse(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    fused: dict[str, torch.Tensor] = {}
    consumed: set[str] = set()
    for name in tensors:
        for target, parts in _FUSED.items():
            for suffix in ("weight", "bias"):
                first = f"{parts[0]}.{suffix}"
                if not name.endswith(first):
                    continue
                prefix = name[: -len(first)]
                names = [f"{prefix}{p}.{suffix}" for p in parts]
                absent = [n for n in names if n not in tensors]
                if absent:
                    raise ModelLoadError(f"checkpoint: missing tensors {absent}")
                fused[f"{prefix}{target}.{suffix}"] = torch.cat([tensors[n] for n in names], dim=0)
                consumed.update(names)
    fused.update({k: v for k, v in tensors.items() if k not in consumed})
    return fused


def load_model(
    model_dir: Path, config: ModelConfig, dtype: torch.dtype, device: torch.device, max_positions: int
) -> torch.nn.Module:
    with torch.device("meta"):
        model = MODEL_CLASSES[config.model_type](config, max_positions)
    state = _fuse(read_checkpoint(model_dir))
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    expected = {k for k in model.state_dict() if not (config.tie_word_embeddings and k == "lm_head.weight")}
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected)
    if missing or unexpected:
        raise ModelLoadError(
            f"{model_dir}: checkpoint does not match {config.architecture}: "
            f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
            f"unexpected {unexpected[:8]}{'...' if len(unexpected) > 8 else ''}"
        )
    params = model.state_dict()
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(params[name].shape):
            raise ModelLoadError(
                f"{model_dir}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"config.json implies {tuple(params[name].shape)}"
            )
    model = model.to_empty(device=device).to(dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # Non-persistent buffers (rotary tables) were on meta; rebuild them on the real device.
    rotary = model.model.layers[0].self_attn.rotary
    fresh = type(rotary)(config.rope, config.head_dim, max_positions).to(device)
    rotary.cos, rotary.sin = fresh.cos, fresh.sin
    return model.eval()
