"""Sampling: seeded reproducibility whatever the batch, and each transform's effect."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgecloud.llm import LLM, InvalidRequestError, SamplingParams
from edgecloud.llm.sampler import Sampler, SampleRow


def fp32_llm(model_dir: Path) -> LLM:
    return LLM(model=str(model_dir), dtype="float32", kv_cache_memory_mb=2)


def test_seeded_sampling_is_reproducible_across_runs_and_batches(llama_dir: Path) -> None:
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=12, ignore_eos=True)
    prompt = [10, 11, 12, 13]
    alone = fp32_llm(llama_dir).generate([prompt], seeded)[0].outputs[0].token_ids
    again = fp32_llm(llama_dir).generate([prompt], seeded)[0].outputs[0].token_ids
    crowd = [[i, i + 1, i + 2] for i in range(20, 40)]
    mixed = LLM(model=str(llama_dir), dtype="float32", kv_cache_memory_mb=2, seed=99).generate(
        [*crowd[:7], prompt, *crowd[7:]],
        [SamplingParams(temperature=0.8, max_tokens=20, ignore_eos=True)] * 7
        + [seeded]
        + [SamplingParams(temperature=1.2, max_tokens=5, ignore_eos=True)] * 13,
    )[7].outputs[0].token_ids
    assert alone == again == mixed
    other_seed = SamplingParams(temperature=1.0, top_p=0.9, seed=4321, max_tokens=12, ignore_eos=True)
    different = LLM(model=str(llama_dir), dtype="float32", kv_cache_memory_mb=2).generate([prompt], other_seed)[0]
    assert different.outputs[0].token_ids != alone


def test_n_seeded_samples_differ_from_each_other(llama_dir: Path) -> None:
    out = LLM(model=str(llama_dir), dtype="float32", kv_cache_memory_mb=2).generate(
        [[5, 6, 7]], SamplingParams(n=4, temperature=1.5, seed=7, max_tokens=10, ignore_eos=True)
    )[0]
    assert len(out.outputs) == 4 and [o.index for o in out.outputs] == [0, 1, 2, 3]
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1


def row(**kw: object) -> SampleRow:
    return SampleRow(SamplingParams(**kw), None, [0], [])  # type: ignore[arg-type]


def test_top_k_one_and_tiny_top_p_and_min_p_one_are_greedy() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    sampler = Sampler(seed=0)
    rows = [row(temperature=1.0, top_k=1), row(temperature=1.0, top_p=1e-6), row(temperature=1.0, min_p=1.0)] * 2
    tokens, _ = sampler(logits.clone(), rows)
    assert tokens == logits.argmax(-1).tolist()


def test_top_k_restricts_samples_to_the_k_best() -> None:
    logits = torch.arange(20, dtype=torch.float32).repeat(200, 1)
    tokens, _ = Sampler(seed=1)(logits, [row(temperature=5.0, top_k=3)] * 200)
    assert set(tokens) == {17, 18, 19}


def test_penalties_steer_away_from_repeated_tokens() -> None:
    logits = torch.zeros(1, 10)
    logits[0, 3] = 1.0
    logits[0, 4] = 0.9
    penalised = SampleRow(SamplingParams(temperature=0.0, frequency_penalty=0.5), None, [0], [3])
    assert Sampler(seed=0)(logits.clone(), [penalised])[0] == [4]
    repeated = SampleRow(SamplingParams(temperature=0.0, repetition_penalty=2.0), None, [3], [])
    assert Sampler(seed=0)(logits.clone(), [repeated])[0] == [4]


def test_logprobs_report_top_k_sorted() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    _, lps = Sampler(seed=0)(logits, [row(temperature=0.0, logprobs=2)])
    assert lps[0] is not None and lps[0].token_id == 1
    assert [t for t, _ in lps[0].top] == [1, 3]
    assert lps[0].logprob == pytest.approx(torch.log_softmax(logits, -1)[0, 1].item())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0), ("max_tokens", -3), ("top_p", 0.0), ("top_p", 1.5), ("temperature", -0.1),
        ("n", 0), ("top_k", -2), ("min_p", 2.0), ("logprobs", 50), ("stop", [""]), ("presence_penalty", 3.0),
    ],
)
def test_invalid_sampling_params_name_the_field(field: str, value: object) -> None:
    with pytest.raises(InvalidRequestError) as info:
        SamplingParams(**{field: value})  # type: ignore[arg-type]
    assert info.value.param == field
    assert field in str(info.value)
