"""SFT of the agents' adapters: the frozen lower layers computed once give the same logits and the
same loss as the full forward pass, so caching them changes the cost of a step, not the step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgecloud.edge.netgpt.train import (
    Example,
    SFTConfig,
    add_adapter,
    answer_logits,
    batch_tensors,
    first_adapted_layer,
    load_base,
    lower_hidden,
    pad_hidden,
    sft,
    upper_logits,
)
from edgecloud.llm.random_model import write_random_model

EXAMPLES = [Example([3, 4, 5, 6, 7], [8, 9, 1]), Example([10, 11], [12, 13, 14, 15, 1]), Example([16], [17, 1])]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("train") / "llama", arch="llama")


def adapted(path: Path, layers: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = add_adapter(load_base(path), SFTConfig(rank=4, num_layers=layers))
    with torch.no_grad():  # a non-zero adapter (LoRA's B starts at zero), so the adapted layers matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval()


def test_first_adapted_layer_is_the_lowest_with_lora(tiny: Path) -> None:
    total = load_base(tiny).config.num_hidden_layers
    assert first_adapted_layer(adapted(tiny, 1)) == total - 1
    assert first_adapted_layer(adapted(tiny, total)) == 0
    assert first_adapted_layer(load_base(tiny)) == total


def test_upper_layers_on_cached_lower_states_equal_the_full_forward(tiny: Path) -> None:
    model = adapted(tiny, 1)
    start = first_adapted_layer(model)
    ids, mask, labels = batch_tensors(EXAMPLES, pad_id=0)
    positions = (labels[:, 1:] != -100).nonzero()
    with torch.no_grad():
        full = answer_logits(model, ids, mask, positions)
        states = pad_hidden([lower_hidden(model, e.prompt_ids + e.answer_ids, start) for e in EXAMPLES])
        cached = upper_logits(model, states, start, positions)
    assert full.shape == cached.shape and torch.allclose(full, cached, atol=1e-5)


def test_sft_with_cached_lower_states_takes_the_same_steps(tiny: Path) -> None:
    losses = []
    for cache in (False, True):
        model = adapted(tiny, 1)
        history = sft(model, EXAMPLES, SFTConfig(steps=4, batch_size=2, cache_lower=cache, lr=1e-2), pad_id=0,
                      log=lambda e: None)
        losses.append([h["loss"] for h in history])
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert losses[0][-1] < losses[0][0]  # and it learns
