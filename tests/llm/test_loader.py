"""Loading checkpoints: both config layouts, sharded weights, rope scaling, and precise errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from edgecloud.llm import LLM, ModelLoadError, SamplingParams
from edgecloud.llm.config import ModelConfig
from edgecloud.llm.random_model import write_random_model

from .conftest import HFReference


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_config(model_dir: Path, **changes: object) -> None:
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def test_transformers4_and_transformers5_layouts_read_alike() -> None:
    base = {"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2}
    v4 = ModelConfig.from_dict({**base, "rope_theta": 5e5, "torch_dtype": "bfloat16",
                                "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}})
    v5 = ModelConfig.from_dict({**base, "dtype": "bfloat16",
                                "rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                    "original_max_position_embeddings": 8192}})
    assert v4 == v5
    assert v4.rope.rope_type == "llama3" and v4.rope.theta == 5e5 and v4.torch_dtype == "bfloat16"


def test_llama3_rope_scaling_matches_transformers(tmp_path: Path) -> None:
    model_dir = write_random_model(
        tmp_path / "llama3", arch="llama", max_position_embeddings=512,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    )
    assert ModelConfig.from_file(model_dir / "config.json").rope.rope_type == "llama3"
    prompt = list(range(3, 120))
    ref_ids, ref_lp = HFReference(model_dir).greedy(prompt, 6)
    out = LLM(model=str(model_dir), dtype="float32", kv_cache_memory_mb=2).generate(
        [prompt], SamplingParams(temperature=0.0, max_tokens=6, logprobs=0, ignore_eos=True))[0].outputs[0]
    assert out.token_ids == ref_ids
    assert max(abs(a.logprob - b) for a, b in zip(out.logprobs, ref_lp, strict=True)) < 1e-4


def test_sharded_checkpoint_loads(llama_dir: Path, tmp_path: Path, hf_refs: dict[str, HFReference]) -> None:
    model_dir = copy_model(llama_dir, tmp_path / "sharded")
    tensors = load_file(str(model_dir / "model.safetensors"))
    (model_dir / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for shard, part in enumerate((names[::2], names[1::2])):
        file = f"model-{shard + 1:05d}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, str(model_dir / file))
        weight_map.update(dict.fromkeys(part, file))
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    out = LLM(model=str(model_dir), dtype="float32", kv_cache_memory_mb=1).generate(
        [[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))[0]
    assert out.outputs[0].token_ids == hf_refs["llama"].greedy([5, 6, 7], 5)[0]


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / "config.json").unlink(), "config.json"),
        (lambda d: (d / "config.json").write_text("{not json"), "config.json"),
        (lambda d: edit_config(d, architectures=["GPT2LMHeadModel"]), "GPT2LMHeadModel"),
        (lambda d: edit_config(d, hidden_size=None), "hidden_size"),
        (lambda d: edit_config(d, hidden_size=96), "shape"),
        (lambda d: (d / "model.safetensors").unlink(), "safetensors"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage"), "model.safetensors"),
        (lambda d: (d / "tokenizer.json").unlink(), "tokenizer.json"),
        (lambda d: edit_config(d, rope_parameters={"rope_type": "mrope", "factor": 2.0}), "mrope"),
    ],
)
def test_broken_model_directories_name_the_culprit(
    llama_dir: Path, tmp_path: Path, breakage: object, message: str
) -> None:
    model_dir = copy_model(llama_dir, tmp_path / "broken")
    breakage(model_dir)  # type: ignore[operator]
    with pytest.raises(ModelLoadError, match=message):
        LLM(model=str(model_dir), dtype="float32")


def test_missing_tensor_is_named(llama_dir: Path, tmp_path: Path) -> None:
    model_dir = copy_model(llama_dir, tmp_path / "missing")
    tensors = load_file(str(model_dir / "model.safetensors"))
    del tensors["model.layers.1.mlp.down_proj.weight"]
    save_file(tensors, str(model_dir / "model.safetensors"))
    with pytest.raises(ModelLoadError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        LLM(model=str(model_dir), dtype="float32")


def test_bfloat16_runs_and_stays_close(llama_dir: Path, hf_refs: dict[str, HFReference]) -> None:
    out = LLM(model=str(llama_dir), dtype="bfloat16", kv_cache_memory_mb=1).generate(
        [[5, 6, 7, 8]], SamplingParams(temperature=0.0, max_tokens=4, logprobs=0, ignore_eos=True))[0].outputs[0]
    assert out.logprobs and all(torch.isfinite(torch.tensor(lp.logprob)) for lp in out.logprobs)
    ref_ids, _ = hf_refs["llama"].greedy([5, 6, 7, 8], 4)
    assert out.token_ids[0] == ref_ids[0]


def test_chat_template_renders_and_errors_are_request_errors(llama_dir: Path) -> None:
    tokenizer = LLM(model=str(llama_dir), dtype="float32", kv_cache_memory_mb=1).tokenizer
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    assert text == "<|user|>hi\n<|assistant|>"
    assert tokenizer.decode(tokenizer.encode("Hello edge!")) == "Hello edge!"
