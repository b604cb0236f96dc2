"""Training the agents' models: supervised fine-tuning (SFT) on BFCL train functions with LoRA
adapters (peft), and merging an adapter into a full HF directory our engine serves.

The adapters train the attention and MLP projections of the top ``num_layers`` decoder layers
only: gradients then stop at the lowest adapted layer, and the layers below it are frozen, so the
hidden states entering it depend on the tokens alone. They are computed once per example
(``lower_hidden``) and a training step runs only the adapted layers and the LM head
(``upper_logits``): with the top 6 of SmolLM2's 30 layers, a step after the first epoch costs about
a fifth of a full forward pass (what makes CPU training of a 135M model feasible on two shared
cores). Loss is on the answer tokens only (the prompt is context).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Files a converted model directory needs besides the weights (the engine's loader reads them).
MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
               "generation_config.json")


@dataclass
class SFTConfig:
    rank: int = 8
    alpha: int = 16
    num_layers: int = 8  # adapt the top layers only
    steps: int = 150
    batch_size: int = 4
    lr: float = 5e-4
    seed: int = 0
    max_prompt_tokens: int = 400
    cache_lower: bool = True  # run the frozen layers below the adapted ones once per example, not every step


@dataclass
class Example:
    prompt_ids: list[int]
    answer_ids: list[int]  # the answer and the end-of-turn token


def load_base(model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)


def add_adapter(model: Any, config: SFTConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    num_layers = model.config.num_hidden_layers
    layers = list(range(num_layers - min(config.num_layers, num_layers), num_layers))
    lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, target_modules=list(TARGET_MODULES),
                      layers_to_transform=layers, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def batch_tensors(examples: Sequence[Example], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (-100 off the answers)."""
    length = max(len(e.prompt_ids) + len(e.answer_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(examples), length), dtype=torch.int64)
    labels = torch.full((len(examples), length), -100, dtype=torch.int64)
    for i, e in enumerate(examples):
        seq = e.prompt_ids + e.answer_ids
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(e.prompt_ids): len(seq)] = torch.tensor(e.answer_ids)
    return ids, mask, labels


def answer_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Logits at ``positions`` (``[n, 2]`` row/column pairs) only: the LM head (a fifth of a
    135M model's forward FLOPs) runs on the answer tokens, not the whole prompt."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal_lm.model(input_ids=ids, attention_mask=mask).last_hidden_state
    return causal_lm.lm_head(hidden[positions[:, 0], positions[:, 1]]).float()


def _causal_lm(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def first_adapted_layer(model: Any) -> int:
    """The lowest decoder layer that holds LoRA weights: every layer below it is frozen, so the
    hidden states entering it do not depend on the adapter (the number of layers when none does)."""
    layers = _causal_lm(model).model.layers
    for index, layer in enumerate(layers):
        if any("lora_" in name for name, _ in layer.named_parameters()):
            return index
    return len(layers)


def run_layers(model: Any, hidden: torch.Tensor, start: int, stop: int | None = None) -> torch.Tensor:
    """The decoder layers ``start .. stop-1`` applied to ``hidden`` (``[batch, tokens, hidden]``,
    positions from 0, causal; right padding never reaches the tokens before it)."""
    from transformers.masking_utils import create_causal_mask

    inner = _causal_lm(model).model
    positions = torch.arange(hidden.shape[1]).unsqueeze(0)
    mask = create_causal_mask(config=inner.config, inputs_embeds=hidden, attention_mask=None, cache=None,
                              position_ids=positions)
    rope = inner.rotary_emb(hidden, position_ids=positions)
    for layer in inner.layers[start:stop]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=rope, position_ids=positions)
    return hidden


@torch.no_grad()
def lower_hidden(model: Any, ids: list[int], start: int) -> torch.Tensor:
    """The hidden states entering layer ``start`` for a token sequence (``[tokens, hidden]``): what
    the frozen lower layers compute, once, so that training steps run only the adapted layers."""
    inner = _causal_lm(model).model
    return run_layers(model, inner.embed_tokens(torch.tensor([ids])), 0, start)[0]


def upper_logits(model: Any, hidden: torch.Tensor, start: int, positions: torch.Tensor) -> torch.Tensor:
    """``answer_logits`` from the hidden states entering layer ``start`` (``[batch, tokens, hidden]``,
    right-padded): the layers from ``start`` up, the final norm and the LM head at ``positions``."""
    causal_lm = _causal_lm(model)
    out = causal_lm.model.norm(run_layers(model, hidden, start))
    return causal_lm.lm_head(out[positions[:, 0], positions[:, 1]]).float()


def pad_hidden(states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Right-padded ``[batch, tokens, hidden]`` of ``[tokens, hidden]`` states (zeros after each)."""
    out = torch.zeros(len(states), max(s.shape[0] for s in states), states[0].shape[1])
    for i, s in enumerate(states):
        out[i, : s.shape[0]] = s
    return out


def answer_loss(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens (labels != -100), each predicted from the position before."""
    targets = labels[:, 1:]
    positions = (targets != -100).nonzero()
    logits = answer_logits(model, ids, mask, positions)
    return torch.nn.functional.cross_entropy(logits, targets[positions[:, 0], positions[:, 1]])


def sft(model: Any, examples: list[Example], config: SFTConfig, pad_id: int,
        log: Callable[[dict[str, Any]], None] = print,
        after_step: Callable[[int, list[dict[str, Any]]], None] | None = None) -> list[dict[str, Any]]:
    """Fine-tunes ``model`` (a peft model) in place: AdamW, cosine decay, ``steps`` batches drawn
    from ``examples`` in shuffled epochs. Returns the loss log. ``after_step(step, history)`` runs
    after each step (1-based), e.g. to save a checkpoint of the adapter part way."""
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    order: list[int] = []
    history = []
    first = first_adapted_layer(model)
    cache: dict[int, torch.Tensor] = {}  # example -> hidden states entering layer ``first`` (frozen below it)
    model.train()
    start = time.monotonic()
    for step in range(config.steps):
        if len(order) < config.batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order.extend(fresh)
        chosen = [order.pop() for _ in range(config.batch_size)]
        batch = [examples[i] for i in chosen]
        ids, mask, labels = batch_tensors(batch, pad_id)
        lr = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        if config.cache_lower:
            for i in chosen:
                if i not in cache:
                    e = examples[i]
                    cache[i] = lower_hidden(model, e.prompt_ids + e.answer_ids, first)
            targets = labels[:, 1:]
            positions = (targets != -100).nonzero()
            logits = upper_logits(model, pad_hidden([cache[i] for i in chosen]), first, positions)
            loss = torch.nn.functional.cross_entropy(logits, targets[positions[:, 0], positions[:, 1]])
        else:
            loss = answer_loss(model, ids, mask, labels)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        entry = {"step": step + 1, "loss": loss.item(), "lr": lr, "elapsed_s": time.monotonic() - start}
        history.append(entry)
        log(entry)
        if after_step is not None:
            model.eval()
            after_step(step + 1, history)
            model.train()
    model.eval()
    return history


def save_adapter(model: Any, out_dir: Path, config: SFTConfig, extra: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    (out_dir / "training.json").write_text(json.dumps({"config": asdict(config), **extra}, indent=1))


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """A full HF directory (base weights + adapter) that the engine serves; written once, atomically."""
    if (out_dir / "model.safetensors").exists():
        return out_dir
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_base(base_dir), adapter_dir).merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    for name in MODEL_FILES:
        if (base_dir / name).exists():
            shutil.copy(base_dir / name, tmp / name)
    tmp.rename(out_dir)
    return out_dir
