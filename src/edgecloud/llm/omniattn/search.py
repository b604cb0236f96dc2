"""The layer search: which layers may keep only a sink and a window, under a KV budget.

OmniAttn (OmniInfer, arXiv 2511.22481) searches whole-layer patterns with a genetic algorithm,
scoring each candidate by inference only (no training) on long calibration prompts. Here:

- **Budget**: the KV a pattern holds (layers x tokens, ``LayerPattern.kv_fraction``) at a reference
  context, as a fraction of full KV; the search compresses the fewest layers that meet it.
- **Score** (lower is better): on each calibration item, the mean increase in per-token negative
  log-likelihood over full KV of the tokens decoding predicts (``evaluate.py``: prefilled once,
  the continuation teacher-forced as the pattern decodes it), averaged over items. Items are long
  code texts and needle prompts (the pass key's digits), as OmniAttn scores on pass-key retrieval.
- **Genetic** (default, as OmniAttn's code): a random population of patterns with exactly ``k``
  compressed layers; each generation keeps the best (elites) and breeds the rest: a child keeps the
  layers both parents compress and draws the rest from either parent, then a mutation swaps one
  compressed layer for a full one, half the time guided by each layer's mean score over every
  pattern evaluated so far (OmniAttn's per-layer score table), half the time at random.
- **Greedy**: each layer compressed alone, the ``k`` least harmful compressed together (one
  evaluation per layer; blind to how layers interact).

The cost is reported: patterns evaluated, tokens through the model, seconds.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.omniattn.evaluate import PatternEvaluator, PrefilledSequence
from edgecloud.llm.omniattn.pattern import DEFAULT_SINK_BLOCKS, DEFAULT_WINDOW_BLOCKS, LayerPattern
from edgecloud.llm.omniattn.quality import (
    CALIBRATION_FILES,
    CALIBRATION_HAYSTACK_OFFSET,
    needle_cases,
    read_text,
    text_tokens,
)
from edgecloud.llm.tokenizer import Tokenizer

SEARCH_METHODS = ("genetic", "greedy")


@dataclass
class CalibrationItem:
    name: str
    seq: PrefilledSequence
    start: int  # the continuation's prompt length
    end: int
    full_nll: float = 0.0  # mean NLL of its continuation under full KV


@dataclass
class Calibration:
    evaluator: PatternEvaluator
    items: list[CalibrationItem]
    evaluations: int = 0

    def __post_init__(self) -> None:
        for item in self.items:
            item.full_nll = self._nll(item, None)

    def _nll(self, item: CalibrationItem, pattern: LayerPattern | None) -> float:
        return float(-self.evaluator.continuation_logprobs(item.seq, pattern, item.start, item.end).mean())

    def loss(self, pattern: LayerPattern) -> float:
        """Mean over items of the per-token NLL increase over full KV."""
        self.evaluations += 1
        return sum(self._nll(item, pattern) - item.full_nll for item in self.items) / len(self.items)


def layers_for_budget(num_layers: int, budget: float, context: int, **pattern_options: int) -> int:
    """The fewest compressed layers whose pattern holds at most ``budget`` of full KV at ``context``."""
    for k in range(num_layers + 1):
        if LayerPattern.compressing(num_layers, set(range(k)), **pattern_options).kv_fraction(context) <= budget + 1e-9:
            return k
    raise ValueError(f"budget {budget} cannot be met even with every layer compressed at context {context}")


@dataclass
class SearchResult:
    compressed: frozenset[int]
    loss: float
    evaluations: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)  # per generation / phase: best loss so far
    # per layer: greedy, its loss compressed alone; genetic, the mean loss of the patterns that compress it
    layer_scores: dict[int, float] = field(default_factory=dict)


def greedy_search(num_layers: int, k: int, loss: Callable[[frozenset[int]], float]) -> SearchResult:
    start = time.perf_counter()
    single = {layer: loss(frozenset({layer})) for layer in range(num_layers)}
    chosen = frozenset(sorted(single, key=lambda layer: single[layer])[:k])
    final = loss(chosen)
    return SearchResult(chosen, final, num_layers + 1, time.perf_counter() - start,
                        [{"phase": 0.0, "best_loss": final}], single)


def genetic_search(
    num_layers: int, k: int, loss: Callable[[frozenset[int]], float], population: int = 12, generations: int = 4,
    elite: int = 3, seed: int = 0,
) -> SearchResult:
    start = time.perf_counter()
    rng = random.Random(seed)
    scores: dict[frozenset[int], float] = {}
    layer_sum = [0.0] * num_layers
    layer_count = [0] * num_layers
    history = []

    def evaluate(candidates: list[frozenset[int]]) -> None:
        for pattern in candidates:
            if pattern in scores:
                continue
            scores[pattern] = loss(pattern)
            for layer in pattern:
                layer_sum[layer] += scores[pattern]
                layer_count[layer] += 1

    def layer_mean(layer: int) -> float:
        return layer_sum[layer] / layer_count[layer] if layer_count[layer] else 0.0

    def mutate(child: set[int]) -> set[int]:
        out = sorted(set(range(num_layers)) - child)
        if not child or not out:
            return child
        if rng.random() < 0.5:
            drop, add = max(child, key=layer_mean), min(out, key=layer_mean)
        else:
            drop, add = rng.choice(sorted(child)), rng.choice(out)
        return (child - {drop}) | {add}

    def child(parents: list[frozenset[int]]) -> frozenset[int]:
        """Keeps what both parents compress, draws the rest from either, then mutates."""
        a, b = rng.sample(parents, 2) if len(parents) > 1 else (parents[0], parents[0])
        both = set(a & b)
        kid = both | set(rng.sample(sorted((a | b) - both), k - len(both)))
        return frozenset(mutate(kid))

    def fresh(limit: int, make: Callable[[], frozenset[int]]) -> list[frozenset[int]]:
        made: set[frozenset[int]] = set()
        for _ in range(limit * 50):
            if len(made) == limit:
                break
            candidate = make()
            if candidate not in scores:
                made.add(candidate)
        return sorted(made, key=sorted)

    evaluate(fresh(population, lambda: frozenset(rng.sample(range(num_layers), k))))
    for generation in range(generations + 1):
        ranked = sorted(scores, key=lambda p: scores[p])
        history.append({"generation": float(generation), "best_loss": scores[ranked[0]],
                        "evaluated": float(len(scores))})
        if generation == generations:
            break
        parents = ranked[: max(elite, population // 2)]
        evaluate(fresh(population - elite, lambda parents=parents: child(parents)))
    best = min(scores, key=lambda p: scores[p])
    return SearchResult(best, scores[best], len(scores), time.perf_counter() - start, history,
                        {layer: layer_mean(layer) for layer in range(num_layers) if layer_count[layer]})


def run_search(
    calibration: Calibration, num_layers: int, k: int, method: str, sink_blocks: int, window_blocks: int,
    block_size: int, seed: int = 0, population: int = 12, generations: int = 4,
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Searches a pattern with ``k`` compressed layers on ``calibration``."""
    if method not in SEARCH_METHODS:
        raise ValueError(f"method must be one of {', '.join(SEARCH_METHODS)}, got {method!r}")

    def loss(compressed: frozenset[int]) -> float:
        pattern = LayerPattern.compressing(num_layers, compressed, sink_blocks=sink_blocks,
                                           window_blocks=window_blocks, block_size=block_size)
        value = calibration.loss(pattern)
        if progress is not None:
            progress(f"pattern {calibration.evaluations}: {pattern.describe()} loss {value:+.4f}")
        return value

    torch.manual_seed(seed)
    if method == "greedy":
        return greedy_search(num_layers, k, loss)
    return genetic_search(num_layers, k, loss, population=population, generations=generations, seed=seed)


def build_calibration(
    evaluator: PatternEvaluator, tokenizer: Tokenizer, context: int, rows: int, cache_dir: Path | None = None,
    seed: int = 0,
) -> tuple[Calibration, list[dict[str, str]]]:
    """The search's calibration set (``quality.py``): the calibration texts' first ``context``
    tokens, scored on their last ``rows``, and two needle prompts of ``context`` tokens (depths
    0.3 and 0.7) scored on the pass key's digits. Returns it and the files it read (name, sha256)."""
    items = []
    files = []
    for name in CALIBRATION_FILES:
        source = read_text(name)
        ids = text_tokens(tokenizer, source, context)
        seq = evaluator.prefill(ids, context - rows, scratch=rows, cache_dir=cache_dir)
        items.append(CalibrationItem(name, seq, context - rows, context))
        files.append({"file": name, "sha256": source.sha256})
    haystack = read_text("pydoc_data/topics.py")
    files.append({"file": "pydoc_data/topics.py", "sha256": haystack.sha256,
                  "use": f"needle haystack from character {CALIBRATION_HAYSTACK_OFFSET}"})
    for case in needle_cases(tokenizer, haystack, [context], [0.3, 0.7], CALIBRATION_HAYSTACK_OFFSET, seed + 1):
        answer = tokenizer.encode(f" {case.key}.", add_special_tokens=False)
        seq = evaluator.prefill(case.prompt + answer, len(case.prompt), scratch=len(answer), cache_dir=cache_dir)
        items.append(CalibrationItem(f"needle@{case.depth}", seq, len(case.prompt), len(case.prompt) + len(answer)))
    return Calibration(evaluator, items), files


def search_pattern(
    model: str | None, budget: float, method: str = "genetic", context: int | None = None,
    calibration_context: int = 3072, calibration_rows: int = 128, sink_blocks: int = DEFAULT_SINK_BLOCKS,
    window_blocks: int = DEFAULT_WINDOW_BLOCKS, block_size: int = 16, population: int = 12, generations: int = 4,
    seed: int = 0, threads: int | None = None, cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> LayerPattern:
    """``edgecloud omniattn search``: a pattern for ``model`` holding at most ``budget`` of full KV
    at ``context`` tokens (default: the model's context), with the search's cost in its ``info``."""
    from edgecloud.llm.omniattn.evaluate import load_evaluator

    if not 0 < budget <= 1:
        raise InvalidRequestError(f"budget must be in (0, 1], got {budget}", "budget")
    if calibration_rows < 2 or calibration_rows >= calibration_context:
        raise InvalidRequestError(f"calibration_rows must be in [2, {calibration_context}), got {calibration_rows}",
                                  "calibration_rows")
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    evaluator, tokenizer, source = load_evaluator(model, block_size)
    num_layers = evaluator.config.num_hidden_layers
    max_len = evaluator.model.model.layers[0].self_attn.rotary.cos.shape[0]
    context = context or max_len
    if calibration_context > max_len:
        raise InvalidRequestError(f"calibration_context must be <= {max_len}, got {calibration_context}",
                                  "calibration_context")
    options = {"sink_blocks": sink_blocks, "window_blocks": window_blocks, "block_size": block_size}
    k = layers_for_budget(num_layers, budget, context, **options)
    calibration, files = build_calibration(evaluator, tokenizer, calibration_context, calibration_rows, cache_dir,
                                           seed)
    prefill_tokens = evaluator.tokens_run
    prepared = time.perf_counter()
    result = run_search(calibration, num_layers, k, method, seed=seed, population=population,
                        generations=generations, progress=progress, **options)
    pattern = LayerPattern.compressing(num_layers, result.compressed, **options)
    info = {
        "model": source.name, "budget": budget, "context": context, "compressed_layers": sorted(result.compressed),
        "kv_fraction": {str(c): round(pattern.kv_fraction(c), 4) for c in (2048, 4096, 8192, context)},
        "search": {
            "method": method, "seed": seed, "population": population, "generations": generations,
            "loss": result.loss, "history": result.history,
            "layer_scores": {str(layer): round(score, 5) for layer, score in sorted(result.layer_scores.items())},
            "calibration": {"context": calibration_context, "rows": calibration_rows, "files": files,
                            "items": [item.name for item in calibration.items],
                            "full_nll": [round(item.full_nll, 4) for item in calibration.items]},
            "cost": {"patterns_evaluated": calibration.evaluations, "prefill_tokens": prefill_tokens,
                     "search_tokens": evaluator.tokens_run - prefill_tokens,
                     "prepare_seconds": round(prepared - started, 1), "search_seconds": round(result.seconds, 1),
                     "threads": torch.get_num_threads()},
        },
    }
    return LayerPattern(pattern.layers, info=info, **options)
