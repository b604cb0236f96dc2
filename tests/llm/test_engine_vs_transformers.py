"""The engine's greedy tokens and logprobs equal transformers' under every scheduling path."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edgecloud.llm import LLM, SamplingParams

from .conftest import HFReference

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, logprobs=0, ignore_eos=True)


def random_prompts(count: int, lo: int, hi: int, seed: int = 0, vocab: int = 400) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(2, vocab) for _ in range(rng.randint(lo, hi))] for _ in range(count)]


def assert_matches(llm: LLM, ref: HFReference, prompts: list[list[int]], params: SamplingParams = GREEDY) -> None:
    outs = llm.generate(prompts, params)
    for prompt, out in zip(prompts, outs, strict=True):
        want_ids, want_lp = ref.greedy(prompt, params.max_tokens)
        for completion in out.outputs:
            assert completion.token_ids == want_ids
            got_lp = [lp.logprob for lp in completion.logprobs]
            assert max(abs(a - b) for a, b in zip(got_lp, want_lp, strict=True)) < 1e-4
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_sixteen_prompts_of_different_lengths_in_one_batch(
    arch: str, model_dirs: dict[str, Path], hf_refs: dict[str, HFReference]
) -> None:
    llm = LLM(model=str(model_dirs[arch]), dtype="float32", block_size=4, kv_cache_memory_mb=2)
    prompts = random_prompts(16, 1, 40, seed=1)
    assert_matches(llm, hf_refs[arch], prompts)


def test_shared_prefixes_hit_the_prefix_cache(llama_dir: Path, hf_refs: dict[str, HFReference]) -> None:
    llm = LLM(model=str(llama_dir), dtype="float32", block_size=4, kv_cache_memory_mb=2)
    system = random_prompts(1, 24, 24, seed=2)[0]
    prompts = [system + tail for tail in random_prompts(6, 1, 9, seed=3)]
    assert_matches(llm, hf_refs["llama"], prompts[:1])
    assert_matches(llm, hf_refs["llama"], prompts[1:])
    stats = llm.engine.stats()
    assert stats.prefix_cache_hits >= 5 * 24  # every later prompt reused the 6 full system blocks
    assert stats.prefix_cache_hits <= stats.prefix_cache_queries


def test_chunked_prefill(llama_dir: Path, hf_refs: dict[str, HFReference]) -> None:
    llm = LLM(model=str(llama_dir), dtype="float32", block_size=4, kv_cache_memory_mb=2, max_num_batched_tokens=7)
    assert_matches(llm, hf_refs["llama"], random_prompts(5, 15, 40, seed=4))


def test_forced_preemption_recomputes_exactly(llama_dir: Path, hf_refs: dict[str, HFReference]) -> None:
    # 2 layers * 2 kv heads * 16 dims * 4 tokens * 2 (k, v) * 4 bytes = 2 KiB a block: 24 blocks.
    llm = LLM(model=str(llama_dir), dtype="float32", block_size=4, kv_cache_memory_mb=48 / 1024)
    assert llm.engine.block_manager.num_blocks == 24
    params = SamplingParams(temperature=0.0, max_tokens=16, logprobs=0, ignore_eos=True)
    assert_matches(llm, hf_refs["llama"], random_prompts(8, 10, 20, seed=5), params)
    assert llm.engine.stats().num_preemptions > 0


def test_n_greater_than_one_shares_prompt_blocks(llama_dir: Path, hf_refs: dict[str, HFReference]) -> None:
    llm = LLM(model=str(llama_dir), dtype="float32", block_size=4, kv_cache_memory_mb=2, enable_prefix_caching=False)
    prompt = random_prompts(1, 13, 13, seed=6)[0]
    params = SamplingParams(n=3, temperature=0.0, max_tokens=8, logprobs=0, ignore_eos=True)
    engine = llm.engine
    engine.add_request("r", prompt, params)
    engine.step()  # prefill + fork
    seqs = engine.requests["r"].seqs
    assert len(seqs) == 3
    # 13 prompt tokens: 3 full blocks shared by all three, each with its own copy of the tail block.
    assert seqs[0].block_table[:3] == seqs[1].block_table[:3] == seqs[2].block_table[:3]
    assert len({s.block_table[3] for s in seqs}) == 3
    assert engine.block_manager.num_blocks - engine.block_manager.num_free_blocks == 3 + 3
    engine.abort("r")
    assert_matches(llm, hf_refs["llama"], [prompt], params)


def test_stop_string_truncates_text(llama_dir: Path, hf_refs: dict[str, HFReference]) -> None:
    llm = LLM(model=str(llama_dir), dtype="float32", block_size=4, kv_cache_memory_mb=2)
    prompt = llm.tokenizer.encode("The quick brown fox jumps over")
    want_ids, _ = hf_refs["llama"].greedy(prompt, 12)
    full_text = llm.tokenizer.decode(want_ids)
    stop = full_text[len(full_text) // 2 : len(full_text) // 2 + 2]
    assert stop.strip(), "the reference text should give a visible stop string"
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12, stop=[stop], ignore_eos=True))[0]
    completion = out.outputs[0]
    assert completion.finish_reason == "stop" and completion.stop_reason == stop
    assert completion.text == full_text[: full_text.index(stop)]
    assert completion.token_ids == want_ids[: len(completion.token_ids)]
    kept = llm.generate(
        [prompt],
        SamplingParams(temperature=0.0, max_tokens=12, stop=stop, include_stop_str_in_output=True, ignore_eos=True),
    )[0].outputs[0]
    assert kept.text == full_text[: full_text.index(stop) + len(stop)]


def test_kv_exported_by_a_prefill_engine_continues_on_a_decode_engine(
    llama_dir: Path, hf_refs: dict[str, HFReference]
) -> None:
    prompt = random_prompts(1, 21, 21, seed=8)[0]
    want_ids, _ = hf_refs["llama"].greedy(prompt, 1 + GREEDY.max_tokens)
    prefill = LLM(model=str(llama_dir), dtype="float32", block_size=4, kv_cache_memory_mb=1).engine
    prefill.add_request("p", prompt, SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True), export_kv=True)
    while prefill.has_unfinished():
        outs = prefill.step()
    kv = outs[0].kv
    assert kv is not None and kv.token_ids == prompt and outs[0].outputs[0].token_ids == want_ids[:1]
    assert prefill.block_manager.num_free_blocks == prefill.block_manager.num_blocks

    decode = LLM(model=str(llama_dir), dtype="float32", block_size=8, kv_cache_memory_mb=1).engine  # another block size
    decode.add_request("d", prompt + want_ids[:1], GREEDY, kv=kv)
    while decode.has_unfinished():
        outs = decode.step()
    assert outs[0].outputs[0].token_ids == want_ids[1:]
    assert outs[0].num_cached_tokens == len(prompt)
