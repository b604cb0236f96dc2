"""Workloads for the serving benchmark: prompts of exact token lengths, and what to ask back.

A benchmark prompt must be exactly ``n`` tokens long for the served model, but an
OpenAI-compatible API takes text. ``PromptVocab`` picks the tokenizer's whole-word tokens that
survive a decode→encode round trip one token each, so a prompt built from ``n`` of them decodes
to text that the server tokenizes back to the same ``n`` ids; prompts that share leading ids
share their leading text, so a server's prefix cache sees the sharing the workload intends.

Three workload shapes:
- random lengths (uniform within ``±range_ratio`` of a mean), like ``vllm bench serve --random``;
- a shared-prefix tree: system prompt → template → unique suffix (the PAT paper's serving
  pattern, where prefix-aware attention pays off);
- trace replay: Azure LLM 2023 and Mooncake lengths (scaled for small models); Mooncake
  ``hash_ids`` become real shared blocks, one fixed random block of tokens per hash id.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from edgecloud.bench.traces import MOONCAKE_BLOCK_TOKENS, TraceRequest


@dataclass(frozen=True)
class BenchRequest:
    """One request to send: the prompt (text and the ids it was built from) and the output length.

    ``trace_arrival_s`` is the trace's arrival time, when the workload came from a trace.
    """

    prompt: str
    prompt_ids: tuple[int, ...]
    output_len: int
    trace_arrival_s: float | None = None


def _two_copies_of_a_word(text: str) -> bool:
    words = text.split()
    return len(words) == 2 and words[0] == words[1] and words[0].isalpha()


class PromptVocab:
    """Token ids that decode to a whole word and re-encode to themselves, alone and in sequence."""

    def __init__(self, tokenizer: Tokenizer, max_candidates: int = 20000) -> None:
        self.tokenizer = tokenizer
        special = set(tokenizer.get_added_tokens_decoder())
        candidates = [
            i for i in range(min(tokenizer.get_vocab_size(), max_candidates)) if i not in special
        ]
        # A token is usable if two copies of it decode to two space-separated copies of one
        # alphabetic word that encode back to the two ids: the space keeps every token its own
        # pre-tokenizer chunk, so no merge can cross from one word into the next, and the round
        # trip rules out byte fragments and normalisation changes.
        texts = tokenizer.decode_batch([[i, i] for i in candidates])
        encoded = tokenizer.encode_batch(texts, add_special_tokens=False)
        self.ids: np.ndarray = np.array(
            [
                i
                for i, text, enc in zip(candidates, texts, encoded, strict=True)
                if enc.ids == [i, i] and _two_copies_of_a_word(text)
            ],
            dtype=np.int64,
        )
        if len(self.ids) < 16:
            raise ValueError(
                f"tokenizer has only {len(self.ids)} whole-word tokens that round-trip through "
                "decode/encode; benchmark prompts need at least 16"
            )

    @classmethod
    def from_dir(cls, directory: str | Path) -> PromptVocab:
        path = Path(directory)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"--tokenizer: no tokenizer.json at {file}")
        return cls(Tokenizer.from_file(str(file)))

    def sample(self, rng: np.random.Generator, n: int) -> list[int]:
        return [int(i) for i in rng.choice(self.ids, size=n)]

    def text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def request(self, ids: Sequence[int], output_len: int, arrival_s: float | None = None) -> BenchRequest:
        return BenchRequest(self.text(ids), tuple(ids), output_len, arrival_s)


@dataclass(frozen=True)
class LengthScaling:
    """Scale trace lengths for a small model: ``round(len * scale)``, at least 1, at most the cap."""

    input_scale: float = 1.0
    output_scale: float = 1.0
    max_input_len: int | None = None
    max_output_len: int | None = None

    def __post_init__(self) -> None:
        for name in ("input_scale", "output_scale"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value}")
        for name in ("max_input_len", "max_output_len"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")

    @staticmethod
    def _scale(length: int, scale: float, cap: int | None) -> int:
        scaled = max(1, round(length * scale))
        return scaled if cap is None else min(scaled, cap)

    def input(self, length: int) -> int:
        return self._scale(length, self.input_scale, self.max_input_len)

    def output(self, length: int) -> int:
        return self._scale(length, self.output_scale, self.max_output_len)


def _uniform_lengths(rng: np.random.Generator, n: int, mean: int, range_ratio: float) -> list[int]:
    if mean < 1:
        raise ValueError(f"length must be >= 1, got {mean}")
    if not 0.0 <= range_ratio < 1.0:
        raise ValueError(f"range_ratio must be in [0, 1), got {range_ratio}")
    low = max(1, math.floor(mean * (1 - range_ratio)))
    high = max(low, math.ceil(mean * (1 + range_ratio)))
    return [int(x) for x in rng.integers(low, high + 1, size=n)]


def random_workload(
    vocab: PromptVocab,
    num_requests: int,
    input_len: int,
    output_len: int,
    range_ratio: float = 0.0,
    seed: int = 0,
) -> list[BenchRequest]:
    """Independent random prompts; lengths uniform in ``[len·(1−r), len·(1+r)]``."""
    rng = np.random.default_rng(seed)
    inputs = _uniform_lengths(rng, num_requests, input_len, range_ratio)
    outputs = _uniform_lengths(rng, num_requests, output_len, range_ratio)
    return [vocab.request(vocab.sample(rng, i), o) for i, o in zip(inputs, outputs, strict=True)]


@dataclass(frozen=True)
class PrefixTree:
    """Shape of a shared-prefix workload: system prompts → templates → unique suffixes."""

    num_systems: int = 2
    system_len: int = 256
    templates_per_system: int = 4
    template_len: int = 64
    requests_per_template: int = 8
    suffix_len: int = 32
    output_len: int = 32

    def __post_init__(self) -> None:
        for name, low in (
            ("num_systems", 1),
            ("system_len", 0),
            ("templates_per_system", 1),
            ("template_len", 0),
            ("requests_per_template", 1),
            ("suffix_len", 1),
            ("output_len", 1),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")

    @property
    def num_requests(self) -> int:
        return self.num_systems * self.templates_per_system * self.requests_per_template


def shared_prefix_workload(vocab: PromptVocab, tree: PrefixTree, seed: int = 0) -> list[BenchRequest]:
    """Requests whose prompts share a system prompt and a template; sent in shuffled order so
    that sharing requests arrive interleaved, as they would from many users."""
    rng = np.random.default_rng(seed)
    requests: list[BenchRequest] = []
    for _ in range(tree.num_systems):
        system = vocab.sample(rng, tree.system_len)
        for _ in range(tree.templates_per_system):
            template = vocab.sample(rng, tree.template_len)
            for _ in range(tree.requests_per_template):
                ids = system + template + vocab.sample(rng, tree.suffix_len)
                requests.append(vocab.request(ids, tree.output_len))
    order = rng.permutation(len(requests))
    return [requests[i] for i in order]


def trace_workload(
    vocab: PromptVocab,
    trace: Sequence[TraceRequest],
    scaling: LengthScaling = LengthScaling(),
    hash_block_tokens: int | None = None,
    seed: int = 0,
) -> list[BenchRequest]:
    """Prompts with a trace's (scaled) lengths and arrival times.

    Requests with ``hash_ids`` (Mooncake) get one fixed block of ``hash_block_tokens`` tokens per
    hash id, so requests whose id lists share a head share that prompt prefix; the default block
    is the trace's 512 tokens scaled like the input lengths, which keeps the sharing structure
    when lengths are scaled. Prompt tokens beyond the blocks (or the whole prompt, without
    hash ids) are fresh random tokens; the prompt is cut to the scaled input length.
    """
    if hash_block_tokens is None:
        hash_block_tokens = max(1, round(MOONCAKE_BLOCK_TOKENS * scaling.input_scale))
    block = hash_block_tokens
    if block < 1:
        raise ValueError(f"hash_block_tokens must be >= 1, got {block}")
    rng = np.random.default_rng(seed)
    blocks: dict[int, list[int]] = {}
    requests: list[BenchRequest] = []
    for record in trace:
        length = scaling.input(record.input_len)
        ids: list[int] = []
        for hash_id in record.hash_ids:
            if len(ids) >= length:
                break
            if hash_id not in blocks:
                blocks[hash_id] = vocab.sample(np.random.default_rng([seed, hash_id]), block)
            ids.extend(blocks[hash_id])
        ids = ids[:length] + vocab.sample(rng, max(0, length - len(ids)))
        requests.append(vocab.request(ids, scaling.output(record.output_len), record.arrival_s))
    return requests
