"""Pretraining WMLM: wireless-anchored InfoNCE plus next-snapshot prediction, on one CPU or many GPUs.

Single process by default; under ``torchrun`` (``WORLD_SIZE`` > 1) each rank trains on its own
slice of every batch and DistributedDataParallel averages the gradients (gloo on CPU, NCCL on
CUDA). The contrastive loss uses each rank's local batch as its negatives, as in the paper's
data-parallel setting without an all-gather.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgecloud.wireless.dataset import WirelessData
from edgecloud.wireless.model import ANCHOR_PAIRS, WMLM, ModelConfig
from edgecloud.wireless.text import encode


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    predict_weight: float = 1.0
    # sequences per batch that also train the decoder (the rest only the contrastive loss)
    predict_rows: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2:
            raise ValueError(f"steps must be >= 1 and batch_size >= 2, got {self.steps} and {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def tensors(
    data: WirelessData, rows: np.ndarray, text_length: int, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """The model's inputs (and labels) for ``rows`` of ``data`` as tensors."""
    a = data.arrays
    bs = a["bs_position"][rows]
    return {
        "channel": torch.from_numpy(a["channel"][rows].astype(np.float32)).to(device),
        "image": torch.from_numpy(a["image"][rows]).to(device),
        "lidar": torch.from_numpy(a["lidar"][rows]).to(device),
        "bs_position": torch.from_numpy(bs).to(device),
        "text": torch.from_numpy(encode([data.texts[i] for i in rows], text_length)).to(device),
        "los": torch.from_numpy(a["los"][rows].astype(np.float32)).to(device),
        "position": torch.from_numpy(a["position"][rows, :2] - bs[:, :2]).to(device),
        "best_beam": torch.from_numpy(a["best_beam"][rows]).to(device),
    }


def _schedule(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _distributed() -> tuple[int, int]:
    """(rank, world size), initialising the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def pretrain(
    data: WirelessData,
    rows: np.ndarray,
    model_config: ModelConfig,
    config: TrainConfig,
    pairs: tuple[tuple[str, str], ...] = ANCHOR_PAIRS,
    device: str = "cpu",
    on_step: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[WMLM, list[dict[str, float]]]:
    """Train on ``rows`` of ``data`` (no task labels are read). Returns the model and a loss log."""
    rank, world = _distributed()
    if world > 1 and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    torch.manual_seed(config.seed)
    model = WMLM(model_config, pairs).to(device)
    trained: torch.nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(
            model, device_ids=[torch.device(device).index] if device.startswith("cuda") else None
        )
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: _schedule(s, config))
    rng = np.random.default_rng([config.seed, 7])
    per_rank = config.batch_size // world
    if per_rank < 2:
        raise ValueError(f"batch_size {config.batch_size} leaves fewer than 2 samples for each of {world} ranks")
    predict_rows = config.predict_rows // world if "wireless" in model.project else 0
    log: list[dict[str, float]] = []
    order = rng.permutation(rows)
    cursor = 0
    started = time.perf_counter()
    model.train()
    for step in range(config.steps):
        if cursor + config.batch_size > len(order):
            order, cursor = rng.permutation(rows), 0
        batch_rows = order[cursor : cursor + config.batch_size][rank * per_rank : (rank + 1) * per_rank]
        cursor += config.batch_size
        batch = tensors(data, np.sort(batch_rows), model_config.text_length, device)
        losses = trained(batch, predict_rows=predict_rows)
        total = losses["total"]
        if "predict" in losses:
            total = total + (config.predict_weight - 1) * losses["predict"]
        optimiser.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        scheduler.step()
        entry = {k: float(v.detach()) for k, v in losses.items()}
        entry["step"] = step
        entry["elapsed_s"] = time.perf_counter() - started
        log.append(entry)
        if on_step is not None and rank == 0:
            on_step(step, entry)
    model.eval()
    return model, log


def save_checkpoint(model: WMLM, path: Path, extra: dict[str, object] | None = None) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"))
    meta = {"model": model.config.to_json(), "pairs": [list(p) for p in model.pairs], **(extra or {})}
    (path / "config.json").write_text(json.dumps(meta, indent=2) + "\n")


def load_checkpoint(path: Path, device: str = "cpu") -> WMLM:
    from safetensors.torch import load_file

    meta_path = path / "config.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{path}: no config.json (write one with `edgecloud wireless pretrain --out {path}`)")
    meta = json.loads(meta_path.read_text())
    raw = meta["model"]
    raw["image_size"] = tuple(raw["image_size"])
    model = WMLM(ModelConfig(**raw), tuple(tuple(p) for p in meta["pairs"]))
    model.load_state_dict(load_file(str(path / "model.safetensors"), device=device))
    return model.to(device).eval()


__all__ = ["TrainConfig", "load_checkpoint", "pretrain", "save_checkpoint", "tensors"]
