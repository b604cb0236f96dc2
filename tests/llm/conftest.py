"""Shared fixtures: tiny random-weight models written by transformers, and its greedy reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgecloud.llm.random_model import write_random_model


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {arch: write_random_model(root / arch, arch=arch) for arch in ("llama", "qwen2", "mistral")}


@pytest.fixture(scope="session")
def llama_dir(model_dirs: dict[str, Path]) -> Path:
    return model_dirs["llama"]


class HFReference:
    """Greedy continuations and per-token logprobs from transformers, one prompt at a time."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self._cache: dict[tuple[tuple[int, ...], int], tuple[list[int], list[float]]] = {}

    def greedy(self, prompt: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
        key = (tuple(prompt), max_tokens)
        if key not in self._cache:
            with torch.no_grad():
                out = self.model.generate(
                    torch.tensor([prompt]), max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                    do_sample=False, output_logits=True, return_dict_in_generate=True,
                    eos_token_id=None, pad_token_id=0,
                )
            ids = out.sequences[0, len(prompt):].tolist()
            steps = zip(out.logits, ids, strict=True)
            logprobs = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in steps]
            self._cache[key] = (ids, logprobs)
        return self._cache[key]


@pytest.fixture(scope="session")
def hf_refs(model_dirs: dict[str, Path]) -> dict[str, HFReference]:
    return {arch: HFReference(path) for arch, path in model_dirs.items()}
