"""Turning logits into next tokens, one row per sampling sequence.

Order of transforms (as in vLLM): penalties (repetition, presence, frequency), logit bias, the
structured-output token mask, temperature,
top-k, top-p, min-p, then sampling. Randomness comes from the exponential-race trick
(``argmax(p / q)`` with ``q ~ Exp(1)``, equivalent to sampling from ``p``); a request with a
seed draws ``q`` from its own generator, so its tokens do not depend on what else is in the
batch. Reported logprobs are those of the model's raw distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgecloud.llm.outputs import TokenLogprob
from edgecloud.llm.sampling_params import SamplingParams
from edgecloud.llm.structured import unpack_bitmask


@dataclass
class SampleRow:
    params: SamplingParams
    generator: torch.Generator | None
    prompt_ids: list[int]
    output_ids: list[int]
    # structured outputs: the allowed next tokens as an int32 bitmask (llm/structured.py), or None
    token_bitmask: torch.Tensor | None = None


class Sampler:
    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, logits: torch.Tensor, rows: list[SampleRow]) -> tuple[list[int], list[TokenLogprob | None]]:
        logits = logits.float().cpu()
        num_rows, vocab = logits.shape
        raw_logprobs = None
        if any(r.params.logprobs is not None for r in rows):
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        logits = self._apply_penalties(logits, rows)
        constrained = [i for i, r in enumerate(rows) if r.token_bitmask is not None]
        if constrained:
            allowed = unpack_bitmask(torch.stack([rows[i].token_bitmask for i in constrained]), vocab)
            logits[constrained] = logits[constrained].masked_fill(~allowed, float("-inf"))

        temps = torch.tensor([r.params.temperature for r in rows])
        greedy = temps == 0.0
        tokens = logits.argmax(dim=-1)
        if not bool(greedy.all()):
            scaled = logits / torch.where(greedy, 1.0, temps).unsqueeze(1)
            scaled = self._apply_top_k_top_p_min_p(scaled, rows)
            probs = torch.softmax(scaled, dim=-1)
            noise = torch.empty_like(probs)
            unseeded = [i for i, r in enumerate(rows) if r.generator is None]
            if unseeded:
                noise[unseeded] = torch.empty(len(unseeded), vocab).exponential_(generator=self.generator)
            for i, r in enumerate(rows):
                if r.generator is not None and not bool(greedy[i]):
                    noise[i].exponential_(generator=r.generator)
            sampled = (probs / noise).argmax(dim=-1)
            tokens = torch.where(greedy, tokens, sampled)

        token_list = tokens.tolist()
        logprobs: list[TokenLogprob | None] = [None] * num_rows
        if raw_logprobs is not None:
            for i, r in enumerate(rows):
                k = r.params.logprobs
                if k is None:
                    continue
                top: list[tuple[int, float]] = []
                if k > 0:
                    values, ids = raw_logprobs[i].topk(k)
                    top = list(zip(ids.tolist(), values.tolist(), strict=True))
                logprobs[i] = TokenLogprob(token_list[i], float(raw_logprobs[i, token_list[i]]), top)
        return token_list, logprobs

    @staticmethod
    def _apply_penalties(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
        for i, r in enumerate(rows):
            p = r.params
            if p.repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(r.prompt_ids) | set(r.output_ids)), dtype=torch.int64)
                picked = logits[i, seen]
                logits[i, seen] = torch.where(
                    picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty
                )
            if (p.presence_penalty or p.frequency_penalty) and r.output_ids:
                counts = torch.bincount(torch.tensor(r.output_ids), minlength=logits.shape[1])[: logits.shape[1]]
                logits[i] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
            if p.logit_bias:
                ids = torch.tensor(list(p.logit_bias), dtype=torch.int64)
                logits[i, ids] += torch.tensor(list(p.logit_bias.values()), dtype=logits.dtype)
        return logits

    @staticmethod
    def _apply_top_k_top_p_min_p(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
        vocab = logits.shape[1]
        top_k = torch.tensor([r.params.top_k if r.params.top_k > 0 else vocab for r in rows])
        top_p = torch.tensor([r.params.top_p for r in rows])
        min_p = torch.tensor([r.params.min_p for r in rows])
        if bool((top_k < vocab).any()) or bool((top_p < 1.0).any()):
            # Only the top max(top_k) candidates can survive: rank those (topk) rather than sorting the
            # whole vocabulary, unless some row has no top-k limit and needs its full top-p prefix.
            width = int(top_k.max())
            if width < vocab:
                sorted_logits, order = logits.topk(width, dim=-1)
            else:
                sorted_logits, order = logits.sort(dim=-1, descending=True)
            ranks = torch.arange(width).unsqueeze(0)
            drop = ranks >= top_k.clamp(max=vocab).unsqueeze(1)
            probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
            # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
            mass_before = probs.cumsum(dim=-1) - probs
            drop |= mass_before >= top_p.unsqueeze(1)
            sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter_(1, order, sorted_logits)
        if bool((min_p > 0).any()):
            probs = torch.softmax(logits, dim=-1)
            threshold = min_p.unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
            logits = logits.masked_fill(probs < threshold, float("-inf"))
        return logits
