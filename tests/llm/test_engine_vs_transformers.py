"""The engine's greedy tokens and logprobs equal transformers' under every scheduling path."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edgecloud.llm import LLM, SamplingParams
from edgecloud.llm.request import KVTransferParams

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
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


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
    assert llm.engine.kv.num_blocks == 24
    params = SamplingParams(temperature=0.0, max_tokens=16, logprobs=0, ignore_eos=True)
    assert_matches(llm, hf_refs["llama"], random_prompts(8, 10, 20, seed=5), params)
    assert llm.engine.stats().num_preemptions > 0


def test_n_samples_share_the_prompt_blocks(llama_dir: Path, hf_refs: dict[str, HFReference]) -> None:
    llm = LLM(model=str(llama_dir), dtype="float32", block_size=4, kv_cache_memory_mb=2)
    prompt = random_prompts(1, 13, 13, seed=6)[0]
    params = SamplingParams(n=3, temperature=0.0, max_tokens=8, logprobs=0, ignore_eos=True)
    engine = llm.engine
    engine.add_request("r", prompt, params)
    engine.step()  # sample 0 prefills the prompt; the other two wait for it
    requests = engine.scheduler.requests
    assert requests["r#0"].num_computed_tokens == 13 and requests["r#1"].num_computed_tokens == 0
    engine.step()  # samples 1 and 2 find the prompt's 3 full blocks cached: only its last token is computed
    tables = [requests[f"r#{i}"].block_tables[0] for i in range(3)]
    assert tables[0][:3] == tables[1][:3] == tables[2][:3]
    assert len({t[3] for t in tables}) == 3
    assert requests["r#1"].num_cached_tokens == requests["r#2"].num_cached_tokens == 12
    engine.abort("r")
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
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
    prefill.add_request("p", prompt, SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True),
                        kv_transfer=KVTransferParams(export=True))
    while prefill.has_unfinished():
        outs = prefill.step()
    keys = outs[0].kv_block_keys
    assert keys is not None and len(keys) == 5 and outs[0].outputs[0].token_ids == want_ids[:1]
    exported = prefill.core.control("export_blocks", {"keys": keys, "unpin": True})
    assert prefill.kv.num_free_blocks == prefill.kv.num_blocks  # unpinned: every block free again

    decode = LLM(model=str(llama_dir), dtype="float32", block_size=4, kv_cache_memory_mb=1).engine
    assert decode.core.control("import_blocks", exported) == 5
    decode.add_request("d", prompt + want_ids[:1], GREEDY)
    while decode.has_unfinished():
        outs = decode.step()
    assert outs[0].outputs[0].token_ids == want_ids[1:]
    assert outs[0].num_cached_tokens == 20  # five imported blocks; the last 2 tokens computed here
