"""The embedded demo model is a standard HF Llama directory that transformers loads offline and
that continues a fortune-like prompt with English-looking text."""

import json
import string
from collections.abc import Iterator

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from edgecloud.llm import LLM, SamplingParams
from edgecloud.llm.demo_model import DEMO_MODEL_DIR

MAX_ASSET_BYTES = 25 * 1000 * 1000
EXPECTED_FILES = {
    "README.md",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return AutoTokenizer.from_pretrained(DEMO_MODEL_DIR, local_files_only=True)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(
        DEMO_MODEL_DIR, local_files_only=True, dtype=torch.float32
    ).eval()


def test_asset_is_packaged_with_all_files_and_within_25_mb() -> None:
    assert DEMO_MODEL_DIR.is_dir()
    assert DEMO_MODEL_DIR.parts[-3:] == ("edgecloud", "assets", "demo-llama")
    assert {path.name for path in DEMO_MODEL_DIR.iterdir()} == EXPECTED_FILES
    assert sum(path.stat().st_size for path in DEMO_MODEL_DIR.iterdir()) <= MAX_ASSET_BYTES


def test_config_is_llama_in_transformers4_layout() -> None:
    raw = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert raw["architectures"] == ["LlamaForCausalLM"]
    assert raw["torch_dtype"] == "bfloat16"
    assert raw["rope_theta"] == 10000.0
    assert raw["max_position_embeddings"] == 512
    assert "rope_parameters" not in raw and "dtype" not in raw

    config = AutoConfig.from_pretrained(DEMO_MODEL_DIR, local_files_only=True)
    assert config.model_type == "llama"
    assert config.hidden_size % config.num_attention_heads == 0
    assert config.num_attention_heads % config.num_key_value_heads == 0


def test_weights_are_bfloat16_with_tied_embeddings(model: torch.nn.Module) -> None:
    with safe_open(DEMO_MODEL_DIR / "model.safetensors", framework="pt") as weights:
        names = set(weights.keys())
        assert {weights.get_slice(name).get_dtype() for name in names} == {"BF16"}
    assert "lm_head.weight" not in names
    assert names == {name for name, _ in model.named_parameters()}
    assert torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


def test_tokenizer_special_tokens_and_chat_template(tokenizer: PreTrainedTokenizerFast) -> None:
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|bos|>",
        "<|eos|>",
        "<|pad|>",
    )
    config = json.loads((DEMO_MODEL_DIR / "config.json").read_text())
    assert tokenizer.bos_token_id == config["bos_token_id"]
    assert tokenizer.eos_token_id == config["eos_token_id"]
    assert len(tokenizer) == config["vocab_size"]
    for role in ("<|system|>", "<|user|>", "<|assistant|>"):
        assert len(tokenizer(role, add_special_tokens=False).input_ids) == 1

    assert tokenizer("You will").input_ids[0] == tokenizer.bos_token_id
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Tell me a fortune."},
    ]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|bos|><|system|>\nBe brief.<|eos|><|user|>\nTell me a fortune.<|eos|><|assistant|>\n"
    )


@settings(max_examples=50, deadline=None)
@given(text=st.text(max_size=200).filter(lambda s: "<|" not in s))
def test_byte_level_tokenizer_round_trips_any_text(tokenizer: PreTrainedTokenizerFast, text: str) -> None:
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert tokenizer.decode(ids) == text


def assert_english_like(text: str) -> None:
    words = text.split()
    assert len(words) >= 3, text
    english = sum(ch in string.ascii_letters or ch in " \n" for ch in text)
    assert english >= 0.8 * len(text), text
    assert sum(word.strip(string.punctuation).isalpha() for word in words) >= 0.6 * len(words), text


@pytest.fixture
def one_thread() -> Iterator[None]:
    # A 6M-parameter model decodes fastest on one thread; on a loaded 2-core machine two
    # OpenMP threads mostly wait for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_greedy_continuation_of_a_fortune_is_english_like(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    prompt = tokenizer("A bird in the hand", return_tensors="pt").input_ids
    with torch.no_grad():
        output = model.generate(
            prompt, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    assert_english_like(tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True))


@pytest.mark.usefixtures("one_thread")
def test_greedy_chat_reply_is_a_fortune_that_ends_with_eos(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me a fortune."}], tokenize=False, add_generation_prompt=True
    )
    prompt = tokenizer(rendered, return_tensors="pt", add_special_tokens=False).input_ids
    assert prompt[0].tolist().count(tokenizer.bos_token_id) == 1
    with torch.no_grad():
        output = model.generate(
            prompt, max_new_tokens=64, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    reply = output[0, prompt.shape[1] :].tolist()
    assert reply[-1] == tokenizer.eos_token_id
    assert_english_like(tokenizer.decode(reply, skip_special_tokens=True))


# bf16 keeps 8 significant bits, so logits are off by a few hundredths. Measured over the 48 steps
# below (AMD EPYC, no AMX): the engine picked float32's argmax at every step and its logprobs were
# within 0.028 of float32's (median 0.006); the tolerance leaves room for other CPUs' bf16 kernels.
BF16_LOGPROB_TOLERANCE = 0.1


@pytest.mark.usefixtures("one_thread")
def test_engine_runs_the_demo_model_in_its_own_bfloat16_within_bf16_of_float32(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast
) -> None:
    """The weights ship in bf16 and ``--dtype bfloat16`` computes in bf16. Each token the engine picks,
    fed back through transformers in float32 (teacher forcing), is at every step within bf16 rounding
    of the float32 argmax, and the engine's logprob for it within that of float32's."""
    llm = LLM(model="demo", dtype="bfloat16", kv_cache_memory_mb=4, num_threads=1)
    assert llm.engine.core.dtype == torch.bfloat16
    prompt = tokenizer("A bird in the hand").input_ids
    params = SamplingParams(temperature=0.0, max_tokens=48, logprobs=0, ignore_eos=True)
    out = llm.generate([prompt], params)[0].outputs[0]
    assert out.logprobs is not None and len(out.token_ids) == len(out.logprobs) == 48
    with torch.no_grad():
        logits = model(torch.tensor([prompt + out.token_ids[:-1]])).logits[0, len(prompt) - 1 :]
    reference = torch.log_softmax(logits.double(), -1)
    chosen = reference[torch.arange(len(out.token_ids)), torch.tensor(out.token_ids)]
    behind_argmax = reference.max(-1).values - chosen
    engine = torch.tensor([lp.logprob for lp in out.logprobs], dtype=torch.float64)
    assert behind_argmax.max() <= BF16_LOGPROB_TOLERANCE, behind_argmax
    assert (engine - chosen).abs().max() <= BF16_LOGPROB_TOLERANCE, engine - chosen
    # and it is bf16, not float32 under another name: some logprob differs from float32's
    assert (engine - chosen).abs().max() > 0
    text = tokenizer.decode(out.token_ids[: out.token_ids.index(tokenizer.eos_token_id)]
                            if tokenizer.eos_token_id in out.token_ids else out.token_ids, skip_special_tokens=True)
    assert_english_like(text)
