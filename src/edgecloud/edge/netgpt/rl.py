"""Schema-preserving RL of the edge model from what it offloaded (NetGPT, arXiv 2511.22217, Sec. IV).

Each round takes the requests the router sent to the cloud and the cloud's answers. For each
prompt ``x`` the edge policy ``pi`` (the LoRA adapter) samples ``K`` answers; each answer's reward
is BFCL's AST checker against the cloud's answer (the cloud is the teacher: no answer key) plus
schema validity::

    r(x, y) = 1 if y's calls match the cloud's (AST), 0 if y is schema-valid but does not, -1 if not valid

The update minimises the composite objective (our notation; docs/netgpt.md)::

    L(theta) = - E_{y ~ pi_old} [ clip-surrogate( pi/pi_old, A ) ]        (policy improvement, A group-normalised)
               + beta  * KL( pi || pi_old )                                 (reverse-KL trust region)
               + alpha * KL( pi_SFT || pi )                                 (forward-KL pull to the SFT prior)

The reverse KL keeps each step small (estimated per token with ``k3 = rho - 1 - log rho``,
``rho = pi_old/pi``, on the sampled tokens); the forward KL is a likelihood term on answers
sampled from the SFT model for the same prompts (``- log pi(y_SFT)``): it pulls probability back
onto what the SFT model writes, which is schema-correct, so the policy cannot drift into
malformed outputs even where the reward is flat. ``alpha = 0`` is the plain reverse-KL run
(no SFT anchor) shown for contrast.

**Guided samples** (``RLConfig.guided``): that many of each prompt's ``K`` answers are decoded
under the tool-call grammar (the server's ``tool_choice: required`` structural tag, with the
budget rule, so each is a complete schema-valid call within ``max_new_tokens``); the others are
the policy's own, unconstrained. Why: an edge model whose unconstrained samples are all invalid
gives every answer of a group the reward -1, zero advantage and no gradient (measured, docs/netgpt.md
4.6); a guided answer scores 0 or 1, so each group has a valid answer to move toward, and guided
answers differ among themselves by the AST check. They are off-policy: the surrogate and the
reverse KL use the unconstrained policy's probabilities of their tokens (recorded while sampling)
with no correction for the mask, which tilts the update toward the grammar's support, the
direction validity needs. Evaluation stays unconstrained (the acceptance item's "schema validity
without constrained decoding").
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from edgecloud.edge.netgpt.bfcl import Question, score
from edgecloud.edge.netgpt.score import schema_valid
from edgecloud.edge.netgpt.train import answer_logits, first_adapted_layer, upper_logits
from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.structured import StructuredOutputs, StructuredOutputsParams, unpack_bitmask
from edgecloud.server.tools import parse_tool_calls, tool_call_constraint, validate_tools


@dataclass
class RLConfig:
    samples_per_prompt: int = 4
    beta: float = 0.05  # reverse-KL trust region
    alpha: float = 0.5  # forward-KL pull to the SFT prior (0: plain reverse-KL)
    clip: float = 0.2
    lr: float = 2e-4
    epochs: int = 1
    minibatches: int = 1  # gradient steps an epoch, each over whole prompt groups (PPO-style reuse of samples)
    max_new_tokens: int = 96
    temperature: float = 1.0
    seed: int = 0
    guided: int = 0  # of each prompt's samples, how many decode under the tool-call grammar


@dataclass
class Rollout:
    prompt_ids: list[int]
    answer_ids: list[int]
    reward: float
    advantage: float = 0.0
    old_logprobs: list[float] | None = None
    hidden: torch.Tensor | None = None  # states entering the first adapted layer (``sample``'s ``hidden``)


def teacher_question(question: Question, cloud_calls: list[dict[str, Any]]) -> Question:
    """The question with the cloud's answer as its only possible answer (the AST checker's reference)."""
    truth = [{call["name"]: {k: [v] for k, v in call["arguments"].items()}} for call in cloud_calls]
    # the checker reads function names as BFCL writes them; the cloud answered with tool names
    names = {t["function"]["name"]: f["name"] for t, f in zip(question.tools, question.functions, strict=True)}
    truth = [{names.get(name, name): args for name, args in call.items()} for call in truth]
    return Question(question.id, question.category, question.messages, question.functions, truth, question.tools)


def answer_calls(text: str, tools: list[dict[str, Any]]) -> tuple[list[dict[str, Any]] | None, bool]:
    """The calls of a generated answer (``None``: none parsed) and whether they are schema-valid."""
    _, calls = parse_tool_calls(text, {t["function"]["name"] for t in tools})
    if not calls:
        return None, False
    valid = schema_valid(calls, tools)
    return [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])} for c in calls], valid


def reward(question: Question, text: str) -> tuple[float, bool]:
    """``(r, schema_valid)`` of one answer against the teacher question (see the module docstring)."""
    calls, valid = answer_calls(text, question.tools)
    if not valid:
        return -1.0, False
    return (1.0 if score(question, calls).correct else 0.0), True


def group_advantages(rollouts: list[Rollout], k: int) -> None:
    """``A = (r - mean) / (std + 1e-4)`` within each prompt's group of ``k`` samples."""
    for g in range(0, len(rollouts), k):
        group = rollouts[g: g + k]
        rewards = [r.reward for r in group]
        mean = sum(rewards) / len(rewards)
        std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / len(rewards))
        for r in group:
            r.advantage = (r.reward - mean) / (std + 1e-4)


def tool_grammar(question: Question) -> StructuredOutputsParams:
    """The grammar of a call of the question's functions (``tool_choice: required``, parallel calls
    allowed), as the server constrains it."""
    spec = tool_call_constraint(validate_tools(question.tools, "required", True))
    assert spec is not None
    return spec


def token_logprobs(model: Any, prompt_ids: list[int], answer_ids: list[int],
                   hidden: torch.Tensor | None = None) -> torch.Tensor:
    """log pi(answer token | prefix) for each answer token (with grad when the model has it).
    ``hidden``: the states entering the first adapted layer for the prompt and the answer but its
    last token (``sample`` records them): then only the adapted layers run (the frozen ones below
    give the same states whatever the adapter)."""
    start = len(prompt_ids) - 1
    positions = torch.tensor([[0, start + i] for i in range(len(answer_ids))])
    if hidden is not None:
        logits = upper_logits(model, hidden.unsqueeze(0), first_adapted_layer(model), positions)
    else:
        ids = torch.tensor([prompt_ids + answer_ids])
        logits = answer_logits(model, ids, torch.ones_like(ids), positions)
    return torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(answer_ids).unsqueeze(1)).squeeze(1)


@torch.no_grad()
def sample(model: Any, prompt_ids: list[int], k: int, config: RLConfig, eos_id: int, generator: torch.Generator,
           logprobs: list[list[float]] | None = None,
           guide: tuple[StructuredOutputs, StructuredOutputsParams, int] | None = None,
           hidden: list[torch.Tensor] | None = None) -> list[list[int]]:
    """``k`` answers from the policy (ancestral sampling at ``temperature``), up to EOS. The ``k``
    answers decode together: the prompt is run once and its cache repeated, then one forward per
    step for the answers still open (on a CPU a step of ``k`` rows costs about one of a single row).
    ``logprobs``, when given, receives each answer's token log-probabilities under the model
    (untempered): what ``token_logprobs`` would recompute, without a forward pass per answer.
    ``guide = (backend, grammar, n)``: the first ``n`` answers are sampled under ``grammar`` with
    the budget rule (``llm/structured.py``; their log-probabilities are still the unconstrained
    model's). ``hidden``, when given, receives for each answer the states entering the model's
    first adapted layer at the prompt and the answer's tokens but the last (``token_logprobs``'s
    ``hidden``), read from the decoding passes themselves."""
    layer = first_adapted_layer(model) if hidden is not None else None
    out = model(input_ids=torch.tensor([prompt_ids]), use_cache=True, output_hidden_states=layer is not None)
    states: list[list[torch.Tensor]] = []
    if layer is not None:
        states = [[out.hidden_states[layer][0]] for _ in range(k)]
    past = out.past_key_values
    past.batch_repeat_interleave(k)
    logits = out.logits[:, -1].float().expand(k, -1)
    answers: list[list[int]] = [[] for _ in range(k)]
    if logprobs is not None:
        logprobs[:] = [[] for _ in range(k)]
    open_rows = list(range(k))  # answer index of each row still decoding
    backend, grammars = None, {}
    if guide is not None:
        backend, spec, n = guide
        grammars = {answer: backend.start(spec, config.max_new_tokens) for answer in range(min(n, k))}
    for step_index in range(config.max_new_tokens):
        scaled = logits / max(config.temperature, 1e-5)
        rows = [row for row, answer in enumerate(open_rows) if answer in grammars]
        left = config.max_new_tokens - step_index
        if backend is not None and rows:
            allowed = unpack_bitmask(backend.bitmask([grammars[open_rows[r]] for r in rows], [left] * len(rows)),
                                     backend.vocab_size)
            blocked = torch.ones(len(rows), scaled.shape[1], dtype=torch.bool)
            blocked[:, : allowed.shape[1]] = ~allowed[:, : scaled.shape[1]]
            scaled = scaled.clone()
            scaled[rows] = scaled[rows].masked_fill(blocked, float("-inf"))
        probs = torch.softmax(scaled, -1)
        tokens = torch.multinomial(probs, 1, generator=generator)
        if backend is not None:
            for row in rows:
                forced = backend.accept(grammars[open_rows[row]], int(tokens[row]), left)
                if forced is not None:  # no room left to close after the sampled token
                    tokens[row] = forced
        step = torch.log_softmax(logits, -1).gather(1, tokens).squeeze(1) if logprobs is not None else None
        keep = []
        for row, answer in enumerate(open_rows):
            token = int(tokens[row])
            answers[answer].append(token)
            if logprobs is not None and step is not None:
                logprobs[answer].append(float(step[row]))
            if token != eos_id:
                keep.append(row)
        if not keep:
            break
        if len(keep) < len(open_rows):
            index = torch.tensor(keep)
            past.batch_select_indices(index)
            tokens = tokens[index]
            open_rows = [open_rows[row] for row in keep]
        out = model(input_ids=tokens, past_key_values=past, use_cache=True, output_hidden_states=layer is not None)
        past = out.past_key_values
        logits = out.logits[:, -1].float()
        if layer is not None:
            for row, answer in enumerate(open_rows):
                states[answer].append(out.hidden_states[layer][row])
    if hidden is not None:
        hidden[:] = [torch.cat(parts)[: len(prompt_ids) + len(answer) - 1] for parts, answer in zip(states, answers,
                                                                                                   strict=True)]
    return answers


@dataclass
class RoundStats:
    loss: float
    mean_reward: float
    schema_valid: float
    reverse_kl: float
    forward_nll: float
    unguided_schema_valid: float = 0.0  # of the policy's own (unconstrained) samples
    groups_with_signal: float = 0.0  # prompts whose samples' rewards differ (non-zero advantages)


def composite_step(model: Any, optimizer: torch.optim.Optimizer, rollouts: list[Rollout],
                   sft_answers: list[tuple[list[int], list[int], torch.Tensor | None]],
                   config: RLConfig) -> tuple[float, float, float]:
    """One gradient step of the composite objective over a batch; returns (loss, reverse KL, forward NLL)."""
    optimizer.zero_grad()
    total, rkl_sum, nll_sum = 0.0, 0.0, 0.0
    n = max(len(rollouts), 1)
    for r in rollouts:
        logp = token_logprobs(model, r.prompt_ids, r.answer_ids, r.hidden)
        old = torch.tensor(r.old_logprobs)
        ratio = torch.exp(logp - old)
        surrogate = torch.minimum(ratio * r.advantage, ratio.clamp(1 - config.clip, 1 + config.clip) * r.advantage)
        inverse = torch.exp(old - logp)  # rho = pi_old / pi
        k3 = inverse - 1 - (old - logp)
        loss = (-surrogate.mean() + config.beta * k3.mean()) / n
        loss.backward()
        total += float(loss.detach())
        rkl_sum += float(k3.mean().detach()) / n
    if config.alpha > 0 and sft_answers:
        m = len(sft_answers)
        for prompt_ids, answer_ids, states in sft_answers:
            nll = -token_logprobs(model, prompt_ids, answer_ids, states).mean() / m
            (config.alpha * nll).backward()
            total += float(config.alpha * nll.detach())
            nll_sum += float(nll.detach())
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    return total, rkl_sum, nll_sum


def rl_round(model: Any, sft_model: Callable[[], Any], optimizer: torch.optim.Optimizer,
             batch: Sequence[tuple[Question, list[int]]], config: RLConfig, eos_id: int,
             decode: Callable[[list[int]], str], rng: random.Random,
             backend: StructuredOutputs | None = None) -> RoundStats:
    """One round on ``batch`` = (teacher question, prompt ids) pairs: sample from the policy and
    from the SFT prior, score, then ``epochs`` composite steps. ``sft_model()`` gives a context in
    which ``model`` computes the SFT policy (the adapter's SFT weights swapped in). ``backend``:
    the grammar backend for ``config.guided`` samples a prompt (see the module docstring)."""
    generator = torch.Generator().manual_seed(rng.randrange(2**31))
    model.eval()
    rollouts: list[Rollout] = []
    valid = unguided_valid = own = 0
    for question, prompt in batch:
        olds: list[list[float]] = []  # pi_old of each answer, recorded while sampling
        guide = _guide(backend, question, config)
        guided = guide[2] if guide is not None else 0
        states: list[torch.Tensor] = []
        answers = sample(model, prompt, config.samples_per_prompt, config, eos_id, generator, olds, guide, states)
        for i, (answer, old, hidden) in enumerate(zip(answers, olds, states, strict=True)):
            r, ok = reward(question, decode(answer))
            valid += ok
            unguided_valid += ok and i >= guided
            own += i >= guided
            rollouts.append(Rollout(prompt, answer, r, old_logprobs=old, hidden=hidden))
    group_advantages(rollouts, config.samples_per_prompt)
    k = config.samples_per_prompt
    signal = sum(len({r.reward for r in rollouts[g: g + k]}) > 1 for g in range(0, len(rollouts), k))
    sft_answers: list[tuple[list[int], list[int], torch.Tensor | None]] = []
    if config.alpha > 0:
        with sft_model():
            for _, prompt in batch:
                sft_states: list[torch.Tensor] = []
                answer = sample(model, prompt, 1, config, eos_id, generator, hidden=sft_states)[0]
                sft_answers.append((prompt, answer, sft_states[0]))
    model.train()
    loss = rkl = nll = 0.0
    for _ in range(config.epochs):
        for part in minibatch_groups(len(batch), config.minibatches):
            loss, rkl, nll = composite_step(model, optimizer, [r for g in part for r in rollouts[g * k: (g + 1) * k]],
                                            [sft_answers[g] for g in part if g < len(sft_answers)], config)
    model.eval()
    n = max(len(rollouts), 1)
    return RoundStats(loss, sum(r.reward for r in rollouts) / n, valid / n, rkl, nll, unguided_valid / max(own, 1),
                      signal / max(len(batch), 1))


def minibatch_groups(num_groups: int, minibatches: int) -> list[list[int]]:
    """The prompt groups ``0 .. num_groups-1`` split into ``minibatches`` contiguous, nearly equal,
    non-empty parts (fewer when there are fewer groups): every group in exactly one part."""
    parts = max(1, min(minibatches, num_groups))
    bounds = [round(i * num_groups / parts) for i in range(parts + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(parts) if bounds[i + 1] > bounds[i]]


def _guide(backend: StructuredOutputs | None, question: Question,
           config: RLConfig) -> tuple[StructuredOutputs, StructuredOutputsParams, int] | None:
    """What ``sample`` needs to decode ``config.guided`` answers under the question's tool grammar;
    ``None`` without a backend, or when no complete call fits in ``max_new_tokens`` (then every
    answer is the policy's own)."""
    if backend is None or config.guided <= 0:
        return None
    spec = tool_grammar(question)
    try:
        backend.start(spec, config.max_new_tokens)
    except InvalidRequestError:
        return None
    return backend, spec, min(config.guided, config.samples_per_prompt)
