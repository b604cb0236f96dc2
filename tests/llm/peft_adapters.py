"""PEFT adapters for tests: written by PEFT itself on a random-weight model, with random A and B (so
they change the model's tokens), and PEFT's own greedy tokens as the reference."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    rank: int
    targets: tuple[str, ...]
    alpha: float = 16.0
    rslora: bool = False
    alpha_pattern: tuple[tuple[str, float], ...] = ()


# Five adapters of different ranks, targets and scalings (rsLoRA, a per-module alpha).
FIVE = (
    AdapterSpec("r2-qv", 2, ("q_proj", "v_proj"), alpha=4.0),
    AdapterSpec("r4-all", 4, ALL_TARGETS, alpha=8.0),
    AdapterSpec("r8-mlp", 8, ("gate_proj", "up_proj", "down_proj"), alpha=8.0, rslora=True),
    AdapterSpec("r16-attn", 16, ("q_proj", "k_proj", "v_proj", "o_proj"), alpha=16.0,
                alpha_pattern=(("o_proj", 4.0),)),
    AdapterSpec("r32-kdown", 32, ("k_proj", "down_proj", "up_proj"), alpha=32.0, rslora=True),
)


def write_adapter(model_dir: Path, out: Path, spec: AdapterSpec, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, target_modules=list(spec.targets),
                        use_rslora=spec.rslora, alpha_pattern=dict(spec.alpha_pattern), init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # decisive updates: the adapter must change the greedy tokens
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.3)
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


class PeftReference:
    """Greedy tokens of the base model with one adapter applied by PEFT (float32)."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self._models: dict[str, torch.nn.Module] = {}
        self._tokens: dict[tuple[str, tuple[int, ...], int], list[int]] = {}

    def model(self, adapter_dir: Path | None) -> torch.nn.Module:
        key = str(adapter_dir)
        if key not in self._models:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            base = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch.float32).eval()
            self._models[key] = base if adapter_dir is None else PeftModel.from_pretrained(base, adapter_dir).eval()
        return self._models[key]

    def greedy(self, adapter_dir: Path | None, prompt: list[int], max_tokens: int) -> list[int]:
        key = (str(adapter_dir), tuple(prompt), max_tokens)
        if key not in self._tokens:
            with torch.no_grad():
                out = self.model(adapter_dir).generate(
                    torch.tensor([prompt]), max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False,
                    eos_token_id=None, pad_token_id=0,
                )
            self._tokens[key] = out[0, len(prompt):].tolist()
        return self._tokens[key]
