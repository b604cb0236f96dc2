"""Loading HF-format checkpoints from a local directory into the engine's model.

Reads ``*.safetensors`` (single file or sharded with an index) one tensor at a time and hands
them to the model family's own ``load_weights``, which knows how its checkpoint names map onto
its (fused) parameters. Every failure names the file or tensor at fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from edgecloud.llm.config import ModelConfig
from edgecloud.llm.errors import ModelLoadError
from edgecloud.llm.models import MODEL_CLASSES


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


def iter_checkpoint(model_dir: Path, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` of every tensor in the checkpoint, converted to ``dtype``, one at a time."""
    for path in safetensors_files(model_dir):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    yield name, f.get_tensor(name).to(dtype)
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{path}: cannot read safetensors ({exc})") from None


def load_model(
    model_dir: Path, config: ModelConfig, dtype: torch.dtype, device: torch.device, max_positions: int
) -> torch.nn.Module:
    with torch.device("meta"):
        model = MODEL_CLASSES[config.model_type](config, max_positions)
    model = model.to_empty(device=device).to(dtype)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    try:
        loaded = model.load_weights(iter_checkpoint(model_dir, dtype))
    except ModelLoadError as error:
        raise ModelLoadError(f"{model_dir}: {error}") from None
    missing = sorted(model.expected_weights() - loaded)
    if missing:
        raise ModelLoadError(
            f"{model_dir}: checkpoint does not match {config.architecture}: missing "
            f"{missing[:8]}{'...' if len(missing) > 8 else ''}"
        )
    # Non-persistent buffers (rotary tables) were on meta; rebuild them on the real device.
    rotary = model.model.layers[0].self_attn.rotary
    fresh = type(rotary)(config.rope, config.head_dim, max_positions).to(device)
    rotary.cos, rotary.sin = fresh.cos, fresh.sin
    return model.eval()
