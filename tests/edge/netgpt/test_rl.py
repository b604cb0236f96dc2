"""The schema-preserving RL objective on a tiny random model: rewards from the AST checker against
the cloud's answer, group advantages, and the composite step moving the policy the right way."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from edgecloud.edge.netgpt.bfcl import Question, to_tool
from edgecloud.edge.netgpt.rl import (
    RLConfig,
    Rollout,
    composite_step,
    group_advantages,
    minibatch_groups,
    reward,
    rl_round,
    sample,
    teacher_question,
    token_logprobs,
    tool_grammar,
)
from edgecloud.edge.netgpt.train import Example, SFTConfig, add_adapter, load_base, sft
from edgecloud.llm.random_model import write_random_model
from edgecloud.llm.structured import StructuredOutputs
from edgecloud.llm.tokenizer import Tokenizer
from edgecloud.server.tools import format_call

FUNCTION = {"name": "math.add", "description": "add", "parameters": {
    "type": "dict", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}
QUESTION = Question("q", "simple_python", [{"role": "user", "content": "1+2?"}], [FUNCTION], [], [to_tool(FUNCTION)])
TEACHER = teacher_question(QUESTION, [{"name": "math_add", "arguments": {"a": 1, "b": 2}}])


def test_reward_follows_the_ast_checker_against_the_cloud_answer() -> None:
    assert reward(TEACHER, format_call("math_add", {"a": 1, "b": 2})) == (1.0, True)
    assert reward(TEACHER, format_call("math_add", {"a": 1, "b": 3})) == (0.0, True)  # valid, wrong value
    assert reward(TEACHER, format_call("math_add", {"a": "one", "b": 2})) == (-1.0, False)  # not schema-valid
    assert reward(TEACHER, "I would add them.") == (-1.0, False)


def test_group_advantages_are_normalised_per_prompt() -> None:
    rollouts = [Rollout([1], [2], r) for r in (1.0, 0.0, -1.0, 0.0, 0.5, 0.5, 0.5, 0.5)]
    group_advantages(rollouts, 4)
    assert sum(r.advantage for r in rollouts[:4]) == pytest.approx(0.0, abs=1e-6)
    assert rollouts[0].advantage > 0 > rollouts[2].advantage
    assert all(r.advantage == 0 for r in rollouts[4:])  # no signal when every sample scored the same


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Tokenizer]:
    path = write_random_model(tmp_path_factory.mktemp("rl") / "llama", arch="llama")
    return path, Tokenizer(path)


def test_composite_step_raises_rewarded_answers_and_pulls_towards_sft(tiny: tuple[Path, Tokenizer]) -> None:
    path, _ = tiny
    torch.manual_seed(0)
    model = add_adapter(load_base(path), SFTConfig(rank=4, num_layers=2))
    good, bad, sft = [5, 6, 7, 1], [8, 9, 1], [10, 11, 12, 1]
    prompt = [3, 4, 5]
    with torch.no_grad():
        before = {name: token_logprobs(model, prompt, ids).sum().item() for name, ids in
                  (("good", good), ("bad", bad), ("sft", sft))}
    rollouts = [Rollout(prompt, good, 1.0, 1.0, token_logprobs(model, prompt, good).tolist()),
                Rollout(prompt, bad, -1.0, -1.0, token_logprobs(model, prompt, bad).tolist())]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
    for _ in range(5):
        composite_step(model, optimizer, rollouts, [(prompt, sft, None)], RLConfig(alpha=1.0))
    with torch.no_grad():
        after = {name: token_logprobs(model, prompt, ids).sum().item() for name, ids in
                 (("good", good), ("bad", bad), ("sft", sft))}
    assert after["good"] > before["good"] and after["bad"] < before["bad"] and after["sft"] > before["sft"]


def test_a_round_runs_end_to_end(tiny: tuple[Path, Tokenizer]) -> None:
    path, tokenizer = tiny
    model = add_adapter(load_base(path), SFTConfig(rank=4, num_layers=2))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    prompt = tokenizer.encode("add one and two", add_special_tokens=False)

    @contextlib.contextmanager
    def sft_model() -> Iterator[None]:
        with model.disable_adapter():
            yield

    stats = rl_round(model, sft_model, optimizer, [(TEACHER, prompt)], RLConfig(samples_per_prompt=2,
                     max_new_tokens=8), eos_id=1, decode=tokenizer.decode, rng=random.Random(0))
    assert stats.mean_reward == -1.0 and stats.schema_valid == 0.0  # a random model writes no valid call
    assert stats.forward_nll > 0


def test_guided_samples_are_valid_calls_so_a_round_has_a_signal(tiny: tuple[Path, Tokenizer]) -> None:
    path, tokenizer = tiny
    model = add_adapter(load_base(path), SFTConfig(rank=4, num_layers=2)).eval()
    backend = StructuredOutputs(path / "tokenizer.json", model.config.vocab_size, [1])
    prompt = tokenizer.encode("add one and two", add_special_tokens=False)
    config = RLConfig(samples_per_prompt=4, guided=2, max_new_tokens=96)
    logprobs: list[list[float]] = []
    answers = sample(model, prompt, 4, config, 1, torch.Generator().manual_seed(0), logprobs,
                     (backend, tool_grammar(TEACHER), 2))
    texts = [tokenizer.decode([t for t in a if t != 1]) for a in answers]
    assert [reward(TEACHER, text)[1] for text in texts] == [True, True, False, False], texts
    for answer, lp in zip(answers, logprobs, strict=True):  # the unconstrained policy's, guided or not
        with torch.no_grad():
            assert torch.allclose(torch.tensor(lp), token_logprobs(model, prompt, answer), atol=1e-4)

    @contextlib.contextmanager
    def sft_model() -> Iterator[None]:
        with model.disable_adapter():
            yield

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    stats = rl_round(model, sft_model, optimizer, [(TEACHER, prompt)], config, eos_id=1, decode=tokenizer.decode,
                     rng=random.Random(0), backend=backend)
    assert (stats.schema_valid, stats.unguided_schema_valid, stats.groups_with_signal) == (0.5, 0.0, 1.0)


def test_batched_sampling_at_temperature_zero_is_the_greedy_answer(tiny: tuple[Path, Tokenizer]) -> None:
    path, _ = tiny
    model = load_base(path).eval()
    prompt = [3, 4, 5, 6]
    with torch.no_grad():
        greedy, ids = [], list(prompt)
        for _ in range(6):  # full forwards, no cache: the reference
            token = int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
            greedy.append(token)
            ids.append(token)
    eos = greedy[4]  # rows end when they write it
    answers = sample(model, prompt, 3, RLConfig(temperature=1e-6, max_new_tokens=6), eos, torch.Generator())
    assert answers == [greedy[: greedy.index(eos) + 1]] * 3


def test_sampled_logprobs_are_the_policy_logprobs_of_the_answer(tiny: tuple[Path, Tokenizer]) -> None:
    path, _ = tiny
    model = load_base(path).eval()
    prompt = [3, 4, 5, 6]
    logprobs: list[list[float]] = []
    answers = sample(model, prompt, 3, RLConfig(temperature=1.0, max_new_tokens=6), 1,
                     torch.Generator().manual_seed(0), logprobs)
    assert [len(a) for a in answers] == [len(lp) for lp in logprobs]
    for answer, lp in zip(answers, logprobs, strict=True):
        with torch.no_grad():  # the full forward pass the rollout would otherwise pay for
            assert torch.allclose(torch.tensor(lp), token_logprobs(model, prompt, answer), atol=1e-4)


@pytest.mark.parametrize(("groups", "parts"), [(8, 4), (8, 3), (3, 8), (1, 1), (5, 1), (7, 7)])
def test_minibatches_cover_every_group_once(groups: int, parts: int) -> None:
    split = minibatch_groups(groups, parts)
    assert [g for part in split for g in part] == list(range(groups))
    assert len(split) == min(groups, parts) and all(split)
    assert max(map(len, split)) - min(map(len, split)) <= 1


def test_a_round_takes_one_step_per_minibatch(tiny: tuple[Path, Tokenizer], monkeypatch: pytest.MonkeyPatch) -> None:
    from edgecloud.edge.netgpt import rl

    path, tokenizer = tiny
    model = add_adapter(load_base(path), SFTConfig(rank=4, num_layers=2))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    prompts = [tokenizer.encode(text, add_special_tokens=False) for text in ("one", "two", "three")]
    steps: list[tuple[int, int]] = []
    monkeypatch.setattr(rl, "composite_step", lambda m, o, rollouts, sft_answers, c: (
        steps.append((len(rollouts), len(sft_answers))) or (0.0, 0.0, 0.0)))

    @contextlib.contextmanager
    def sft_model() -> Iterator[None]:
        with model.disable_adapter():
            yield

    rl_round(model, sft_model, optimizer, [(TEACHER, p) for p in prompts],
             RLConfig(samples_per_prompt=2, max_new_tokens=4, epochs=2, minibatches=2), eos_id=1,
             decode=tokenizer.decode, rng=random.Random(0))
    # 3 prompt groups of 2 samples in 2 minibatches (2 groups + 1), twice; each with its prompts' SFT answers
    assert steps == [(4, 2), (2, 1), (4, 2), (2, 1)]


def test_sft_calls_back_after_every_step_with_the_history(tiny: tuple[Path, Tokenizer]) -> None:
    path, _ = tiny
    model = add_adapter(load_base(path), SFTConfig(rank=4, num_layers=2))
    seen: list[tuple[int, int, bool]] = []
    history = sft(model, [Example([3, 4, 5], [6, 1]), Example([7, 8], [9, 10, 1])],
                  SFTConfig(steps=3, batch_size=1), pad_id=0, log=lambda e: None,
                  after_step=lambda step, h: seen.append((step, len(h), model.training)))
    assert seen == [(1, 1, False), (2, 2, False), (3, 3, False)]  # checkpoints see the model in eval mode
    assert len(history) == 3 and not model.training


def test_recorded_lower_states_give_the_full_forward_logprobs(tiny: tuple[Path, Tokenizer]) -> None:
    path, _ = tiny
    torch.manual_seed(0)
    model = add_adapter(load_base(path), SFTConfig(rank=4, num_layers=1)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    prompt = [3, 4, 5, 6]
    states: list[torch.Tensor] = []
    answers = sample(model, prompt, 3, RLConfig(temperature=1.0, max_new_tokens=6), 1,
                     torch.Generator().manual_seed(0), hidden=states)
    for answer, hidden in zip(answers, states, strict=True):
        assert hidden.shape[0] == len(prompt) + len(answer) - 1
        with torch.no_grad():
            assert torch.allclose(token_logprobs(model, prompt, answer, hidden), token_logprobs(model, prompt, answer),
                                  atol=1e-4)
