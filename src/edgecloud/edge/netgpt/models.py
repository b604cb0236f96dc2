"""The agents' models: SmolLM2-135M-Instruct with the LoRA adapters that ship in
``edgecloud/assets/netgpt/`` (trained by ``scripts/netgpt_train.py``), merged once into a full HF
directory the engine serves (``$EDGECLOUD_CACHE_DIR/netgpt/<adapter>-<key>``, like GGUF
conversions: the key hashes the adapter, so a retrained adapter merges anew)."""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

ADAPTERS = ("edge-sft", "cloud-sft")


def adapter_dir(name: str) -> Path:
    path = Path(str(resources.files("edgecloud") / "assets" / "netgpt" / name))
    if not (path / "adapter_model.safetensors").exists():
        raise FileNotFoundError(f"no adapter {name!r} in {path.parent} "
                                f"(train it: scripts/netgpt_train.py --out {path})")
    return path


def agent_model_dir(name_or_path: str) -> Path:
    """A model directory for an agent: a shipped adapter's name (merged on first use) or a path."""
    if name_or_path not in ADAPTERS:
        return Path(name_or_path)
    from edgecloud.cache import cache_dir
    from edgecloud.edge.netgpt.train import merge_adapter
    from edgecloud.llm.gguf import convert_gguf, default_model_path

    adapter = adapter_dir(name_or_path)
    key = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()[:16]
    cache = cache_dir("netgpt")
    cache.mkdir(parents=True, exist_ok=True)
    return merge_adapter(convert_gguf(default_model_path()), adapter, cache / f"{name_or_path}-{key}")
