"""The engine decodes identically with the prefix-aware (PAT) and the dense paged backend."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from edgecloud.llm import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=12, logprobs=0, ignore_eos=True)


def tree_prompts(seed: int) -> list[list[int]]:
    """System prompt → 3 templates → 3 requests each, plus two unrelated prompts."""
    rng = random.Random(seed)

    def words(n: int) -> list[int]:
        return [rng.randrange(2, 400) for _ in range(n)]

    system = words(21)
    prompts = [system + template + words(rng.randint(1, 9))
               for template in (words(9), words(13), words(4)) for _ in range(3)]
    return [*prompts, words(17), words(5)]


def generate(model: Path, backend: str, prompts: list[list[int]], params: SamplingParams, **options: object
             ) -> list[tuple[list[int], list[float]]]:
    # float32: bf16 rounds differently along the two backends' summation orders
    options = {"block_size": 4, "kv_cache_memory_mb": 2, "dtype": "float32", **options}
    llm = LLM(model=str(model), attention_backend=backend, **options)
    outs = llm.generate(prompts, params)
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks
    return [(c.token_ids, [lp.logprob for lp in c.logprobs]) for out in outs for c in out.outputs]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_generations_identical_on_a_prefix_tree(arch: str, model_dirs: dict[str, Path]) -> None:
    prompts = tree_prompts(seed=3)
    paged = generate(model_dirs[arch], "paged", prompts, GREEDY)
    prefix = generate(model_dirs[arch], "prefix", prompts, GREEDY)
    for (want_ids, want_lp), (got_ids, got_lp) in zip(paged, prefix, strict=True):
        assert got_ids == want_ids
        assert max(abs(a - b) for a, b in zip(got_lp, want_lp, strict=True)) < 1e-4


def test_parallel_samples_and_preemption_identical(llama_dir: Path) -> None:
    # n > 1 shares the prompt's blocks between samples; a tiny cache forces preemption
    params = SamplingParams(n=3, temperature=0.0, max_tokens=10, logprobs=0, ignore_eos=True)
    prompts = tree_prompts(seed=5)[:4]
    options = {"kv_cache_memory_mb": 96 / 1024}
    paged = generate(llama_dir, "paged", prompts, params, **options)
    prefix = generate(llama_dir, "prefix", prompts, params, **options)
    assert [ids for ids, _ in prefix] == [ids for ids, _ in paged]
