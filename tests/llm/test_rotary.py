"""Rope scaling of every type published checkpoints use, checked against transformers' own rope
init functions (inverse frequencies and attention factor) and, for YaRN, end to end."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from edgecloud.llm import LLM, ModelLoadError, SamplingParams
from edgecloud.llm.config import ModelConfig
from edgecloud.llm.layers.rotary import RotaryEmbedding, attention_factor, inverse_frequencies
from edgecloud.llm.random_model import write_random_model

from .conftest import HFReference

HEAD_DIM = 128
BASE = {"architectures": ["LlamaForCausalLM"], "vocab_size": 32, "hidden_size": 1024, "intermediate_size": 64,
        "num_hidden_layers": 1, "num_attention_heads": 8}

# (name, transformers-4 style config fields); each is also read in the transformers-5 layout.
CASES: list[tuple[str, dict[str, Any]]] = [
    ("linear", {"rope_theta": 10000.0, "max_position_embeddings": 4096,
                "rope_scaling": {"type": "linear", "factor": 4.0}}),
    ("llama3 (Llama 3.1)", {"rope_theta": 500000.0, "max_position_embeddings": 131072,
                            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}),
    ("yarn (Qwen2.5 long context)", {"rope_theta": 1000000.0, "max_position_embeddings": 32768,
                                     "rope_scaling": {"type": "yarn", "factor": 4.0,
                                                      "original_max_position_embeddings": 32768}}),
    ("yarn (DeepSeek-V3)", {"rope_theta": 10000.0, "max_position_embeddings": 163840,
                            "rope_scaling": {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1,
                                             "mscale": 1.0, "mscale_all_dim": 1.0,
                                             "original_max_position_embeddings": 4096}}),
    ("yarn (mscale ratio, no truncation)", {"rope_theta": 150000.0, "max_position_embeddings": 131072,
                                            "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 16,
                                                             "beta_slow": 2, "mscale": 0.707, "mscale_all_dim": 1.0,
                                                             "truncate": False,
                                                             "original_max_position_embeddings": 4096}}),
    ("yarn (explicit attention_factor)", {"rope_theta": 10000.0, "max_position_embeddings": 16384,
                                          "rope_scaling": {"rope_type": "yarn", "factor": 4.0,
                                                           "attention_factor": 1.25,
                                                           "original_max_position_embeddings": 4096}}),
]


def v5_layout(raw: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    params = out.pop("rope_scaling")
    params["rope_theta"] = out.pop("rope_theta")
    return {**out, "rope_parameters": params}


def transformers_rope(raw: dict[str, Any], rope_type: str, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    config = LlamaConfig(**{k: v for k, v in copy.deepcopy(raw).items() if k != "architectures"}, head_dim=HEAD_DIM)
    inv_freq, factor = ROPE_INIT_FUNCTIONS[rope_type](config, torch.device("cpu"), seq_len=seq_len)
    return inv_freq.double(), float(factor)


def read(raw: dict[str, Any]) -> ModelConfig:
    return ModelConfig.from_dict({**BASE, **copy.deepcopy(raw), "head_dim": HEAD_DIM})


@pytest.mark.parametrize(("name", "raw"), CASES, ids=[c[0] for c in CASES])
def test_frequencies_and_attention_factor_equal_transformers(name: str, raw: dict[str, Any]) -> None:
    rope = read(raw).rope
    assert read(v5_layout(raw)).rope == rope
    ref_freq, ref_factor = transformers_rope(raw, rope.rope_type)
    ours = inverse_frequencies(rope, HEAD_DIM).double()
    torch.testing.assert_close(ours, ref_freq, rtol=2e-6, atol=0)
    assert attention_factor(rope) == pytest.approx(ref_factor, rel=1e-12)


def test_yarn_attention_factor_scales_cos_and_sin() -> None:
    rope = read(CASES[2][1]).rope  # Qwen2.5: factor 4 -> 0.1 ln 4 + 1
    assert attention_factor(rope) == pytest.approx(0.1 * torch.tensor(4.0).log().item() + 1)
    table = RotaryEmbedding(rope, HEAD_DIM, 64)
    assert table.cos[0].unique().tolist() == pytest.approx([attention_factor(rope)])
    assert (table.cos**2 + table.sin**2).sqrt().max().item() == pytest.approx(attention_factor(rope), rel=1e-6)


DYNAMIC = {"rope_theta": 10000.0, "max_position_embeddings": 4096, "rope_scaling": {"type": "dynamic", "factor": 2.0}}


def test_dynamic_ntk_is_transformers_table_at_the_stretched_length() -> None:
    rope = read(DYNAMIC).rope
    assert rope.context_length(4096) == 8192
    ours = inverse_frequencies(rope, HEAD_DIM).double()
    ref, _ = transformers_rope(DYNAMIC, "dynamic", seq_len=8192)
    torch.testing.assert_close(ours, ref, rtol=2e-6, atol=0)
    # transformers recomputes per forward from the batch's longest sequence: a 5000-token batch
    # would see other frequencies, which the fixed table deliberately does not follow.
    other, _ = transformers_rope(DYNAMIC, "dynamic", seq_len=5000)
    assert not torch.allclose(ours, other, rtol=1e-3)
    assert RotaryEmbedding(rope, HEAD_DIM, 100).cos.shape == (100, HEAD_DIM // 2)


def longrope_config() -> dict[str, Any]:
    half = HEAD_DIM // 2
    return {"rope_theta": 10000.0, "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
            "rope_scaling": {"type": "longrope", "short_factor": [1.0 + 0.01 * i for i in range(half)],
                             "long_factor": [1.0 + 0.5 * i for i in range(half)]}}


def test_longrope_short_and_long_factors_equal_transformers() -> None:
    raw = longrope_config()
    rope = read(raw).rope
    assert rope.rope_type == "longrope" and rope.original_max_position_embeddings == 4096 and rope.factor == 32.0
    short_ref, ref_factor = transformers_rope(raw, "longrope", seq_len=None)
    long_ref, _ = transformers_rope(raw, "longrope", seq_len=4097)
    torch.testing.assert_close(inverse_frequencies(rope, HEAD_DIM, 4096).double(), short_ref, rtol=2e-6, atol=0)
    torch.testing.assert_close(inverse_frequencies(rope, HEAD_DIM, 8192).double(), long_ref, rtol=2e-6, atol=0)
    assert attention_factor(rope) == pytest.approx(ref_factor, rel=1e-12)
    bad = longrope_config()
    bad["rope_scaling"]["long_factor"] = [1.0, 2.0]
    with pytest.raises(ModelLoadError, match="long_factor has 2 entries"):
        RotaryEmbedding(read(bad).rope, HEAD_DIM, 8192)


def test_default_rope_and_context_lengths() -> None:
    rope = read({"rope_theta": 5e5, "max_position_embeddings": 2048}).rope
    assert rope.rope_type == "default" and attention_factor(rope) == 1.0
    expected = 1.0 / 5e5 ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)
    torch.testing.assert_close(inverse_frequencies(rope, HEAD_DIM).double(), expected, rtol=1e-7, atol=0)
    assert rope.context_length(2048) == 2048
    assert read(CASES[0][1]).rope.context_length(4096) == 16384  # linear
    assert read(CASES[2][1]).rope.context_length(32768) == 131072  # Qwen2.5 YaRN
    assert read(CASES[3][1]).rope.context_length(163840) == 163840  # DeepSeek-V3


@pytest.mark.parametrize(("scaling", "message"), [
    ({"rope_type": "mrope", "factor": 2.0}, r"rope_scaling.rope_type 'mrope' is not supported"),
    ({"rope_type": "linear"}, r"rope_scaling.factor is required"),
    ({"rope_type": "dynamic", "factor": 0.5}, r"rope_scaling.factor must be >= 1.0"),
    ({"rope_type": "yarn", "factor": "4"}, r"rope_scaling.factor must be a number"),
    ({"rope_type": "longrope", "short_factor": [1.0]}, r"rope_scaling.long_factor must be a list of numbers"),
])
def test_bad_rope_fields_are_named(scaling: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        ModelConfig.from_dict({**BASE, "rope_scaling": scaling}, source="cfg.json")


def test_yarn_model_matches_transformers_end_to_end(tmp_path: Path) -> None:
    model_dir = write_random_model(
        tmp_path / "yarn", arch="qwen2", max_position_embeddings=512,
        rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                         "original_max_position_embeddings": 64},
    )
    assert ModelConfig.from_file(model_dir / "config.json").rope.rope_type == "yarn"
    prompt = list(range(3, 140))
    ref_ids, ref_lp = HFReference(model_dir).greedy(prompt, 6)
    out = LLM(model=str(model_dir), dtype="float32", kv_cache_memory_mb=2).generate(
        [prompt], SamplingParams(temperature=0.0, max_tokens=6, logprobs=0, ignore_eos=True))[0].outputs[0]
    assert out.token_ids == ref_ids
    assert max(abs(a.logprob - b) for a, b in zip(out.logprobs, ref_lp, strict=True)) < 1e-4
