"""``edgecloud bench omniattn``: OmniAttn against full KV, StreamingLLM and random layer patterns.

Two parts, on the same model and the same inputs for every method:

- **quality** (not timed): perplexity of the held-out texts' continuation at each context
  (``evaluate.py``: the prompt prefilled once with full attention, the last ``rows`` tokens
  teacher-forced as decoding predicts them under each pattern; its ratio to full KV's on the same
  tokens with a paired bootstrap interval) and needle-in-a-haystack accuracy
  (greedy answers decoded under each pattern) at each needle context and depth (``quality.py``).
- **speed** (timed): the engine's decode step time and the KV a decoding request holds, at each
  step context. The prompt is prefilled once by a full-KV engine that exports its blocks (a P/D
  hand-over); each method's engine imports them and decodes, so every method decodes from the same
  KV and only the decode steps are timed.

Methods at each context ``C``: ``full``; ``omniattn`` (the searched pattern file); ``streaming``
(StreamingLLM: every layer sink + window, the window widened so that the KV held at ``C`` is the
searched pattern's, the same budget); ``random`` (as many compressed layers as the searched pattern,
drawn at random, one case per seed).
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgecloud.llm.omniattn.pattern import LayerPattern
from edgecloud.llm.omniattn.quality import (
    EVAL_FILES,
    TEST_HAYSTACK_OFFSET,
    answer_key,
    needle_cases,
    read_text,
    text_tokens,
)

ANSWER_TOKENS = 8  # a five-digit key and the space before it, with room
PPL_BLOCK = 32  # tokens resampled together in the perplexity ratio's bootstrap


@dataclass(frozen=True)
class Method:
    name: str
    pattern: LayerPattern | None  # None: full KV
    seed: int | None = None

    def case(self, context: int) -> dict[str, Any]:
        fraction = 1.0 if self.pattern is None else self.pattern.kv_fraction(context)
        return {"method": self.name, "seed": self.seed, "context": context, "kv_fraction": round(fraction, 4),
                "compressed_layers": 0 if self.pattern is None else len(self.pattern.compressed)}


def streaming_at_budget(pattern: LayerPattern, context: int) -> LayerPattern:
    """Every layer sink + window, the window as wide as holds ``pattern``'s KV at ``context``."""
    kept_blocks = round(pattern.kv_fraction(context) * context / pattern.block_size)
    window = max(1, kept_blocks - pattern.sink_blocks)
    return LayerPattern.streaming(pattern.num_layers, sink_blocks=pattern.sink_blocks, window_blocks=window,
                                  block_size=pattern.block_size)


def methods_at(pattern: LayerPattern, context: int, random_seeds: list[int]) -> list[Method]:
    options = {"sink_blocks": pattern.sink_blocks, "window_blocks": pattern.window_blocks,
               "block_size": pattern.block_size}
    methods = [Method("full", None), Method("omniattn", pattern),
               Method("streaming", streaming_at_budget(pattern, context))]
    for seed in random_seeds:
        methods.append(Method("random", LayerPattern.random(pattern.num_layers, len(pattern.compressed), seed,
                                                            **options), seed))
    return methods


# -- quality -------------------------------------------------------------------------------------


def run_quality(
    model: str | None, pattern: LayerPattern, contexts: list[int], rows: int, needle_contexts: list[int],
    depths: list[float], random_seeds: list[int], cache_dir: Path | None, seed: int = 0,
    progress: Callable[[str], None] = print, texts: tuple[str, ...] = EVAL_FILES,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Perplexity and needle cases (``ppl``, ``needle_acc``) and what they were computed on;
    perplexity over ``texts`` (held-out files only: a calibration text would score the search on
    its own data)."""
    if set(texts) - set(EVAL_FILES):
        raise ValueError(f"perplexity texts must be held-out files {EVAL_FILES}, got {sorted(texts)}")
    from edgecloud.llm.omniattn.evaluate import load_evaluator

    evaluator, tokenizer, _ = load_evaluator(model, pattern.block_size)
    pattern.check(evaluator.config.num_hidden_layers, pattern.block_size)
    cases: dict[tuple[str, int | None, int], dict[str, Any]] = {}

    def case(method: Method, context: int) -> dict[str, Any]:
        return cases.setdefault((method.name, method.seed, context), method.case(context))

    nll: dict[tuple[str, int | None, int], list[torch.Tensor]] = {}
    files = []
    longest = max(contexts, default=0)
    for name in texts if contexts else ():
        source = read_text(name)
        files.append({"file": name, "sha256": source.sha256, "tokens": longest})
        ids = text_tokens(tokenizer, source, longest)
        seq = evaluator.prefill(ids, longest - rows, scratch=rows, cache_dir=cache_dir)
        for context in contexts:
            for method in methods_at(pattern, context, random_seeds):
                logprobs = _continuation(evaluator, seq, method.pattern, context - rows, context, cache_dir)
                nll.setdefault((method.name, method.seed, context), []).append(-logprobs)
                case(method, context)
        progress(f"perplexity: {name} done")
        del seq
    for key, parts in nll.items():
        cases[key]["ppl"] = round(math.exp(float(torch.cat(parts).mean())), 4)
        cases[key]["ppl_tokens"] = sum(len(p) for p in parts)
        full = nll.get(("full", None, key[2]))
        if full is not None and key[0] != "full":
            ratio, low, high = ppl_ratio(torch.cat(parts), torch.cat(full))
            cases[key].update(ppl_ratio=round(ratio, 5), ppl_ratio_ci95=[round(low, 5), round(high, 5)])
    haystack = read_text("pydoc_data/topics.py")
    # a needle context counts the answer: prompt and answer fit the model's positions
    prompt_lens = [c - ANSWER_TOKENS for c in needle_contexts]
    for needle in needle_cases(tokenizer, haystack, prompt_lens, depths, TEST_HAYSTACK_OFFSET, seed):
        context = needle.context + ANSWER_TOKENS
        seq = evaluator.prefill(needle.prompt, len(needle.prompt), scratch=ANSWER_TOKENS, cache_dir=cache_dir)
        for method in methods_at(pattern, context, random_seeds):
            answer = tokenizer.decode(evaluator.greedy(seq, method.pattern, ANSWER_TOKENS))
            entry = case(method, context)
            entry.setdefault("needle", []).append({"depth": needle.depth, "key": needle.key, "answer": answer,
                                                   "correct": answer_key(answer) == needle.key})
        progress(f"needle: context {context} depth {needle.depth} done")
    for entry in cases.values():
        if "needle" in entry:
            entry["needle_acc"] = round(sum(n["correct"] for n in entry["needle"]) / len(entry["needle"]), 4)
    inputs = {
        "perplexity_files": files, "rows": rows,
        "needle_haystack": {"file": "pydoc_data/topics.py", "sha256": haystack.sha256,
                            "from_character": TEST_HAYSTACK_OFFSET},
        "needle_depths": depths, "tokens_through_model": evaluator.tokens_run,
    }
    return list(cases.values()), inputs


def _continuation(
    evaluator: Any, seq: Any, pattern: LayerPattern | None, start: int, end: int, cache_dir: Path | None
) -> torch.Tensor:
    """``evaluator.continuation_logprobs``; with ``cache_dir``, kept there under a hash of the model,
    the tokens, the span and the pattern, so that a stopped run resumes where it was."""
    if cache_dir is None:
        return evaluator.continuation_logprobs(seq, pattern, start, end)
    shape = "full" if pattern is None else (
        f"{pattern.describe()}:{pattern.sink_blocks}:{pattern.window_blocks}:{pattern.block_size}")
    digest = hashlib.sha256(evaluator.fingerprint + struct.pack(f"<{end}I", *seq.token_ids[:end])
                            + f"{start}:{end}:{shape}".encode())
    path = cache_dir / f"logprobs-{digest.hexdigest()[:24]}.pt"
    if path.exists():
        return torch.load(path)
    logprobs = evaluator.continuation_logprobs(seq, pattern, start, end)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(logprobs, path)
    return logprobs


def ppl_ratio(nll: torch.Tensor, full_nll: torch.Tensor, block: int = PPL_BLOCK, resamples: int = 2000,
              seed: int = 0) -> tuple[float, float, float]:
    """Perplexity over full KV's on the same tokens, exp(mean NLL difference), with a 95% paired
    bootstrap interval: runs of ``block`` consecutive tokens resampled together (neighbouring tokens'
    losses are correlated), the same runs for both."""
    diff = (nll - full_nll).double()
    runs = diff[: len(diff) // block * block].view(-1, block).mean(1) if len(diff) >= 2 * block else diff
    generator = torch.Generator().manual_seed(seed)
    draws = runs[torch.randint(len(runs), (resamples, len(runs)), generator=generator)].mean(1)
    low, high = torch.quantile(draws, torch.tensor([0.025, 0.975], dtype=draws.dtype)).tolist()
    return math.exp(float(diff.mean())), math.exp(low), math.exp(high)


# -- speed ---------------------------------------------------------------------------------------


def _engine(model: str | None, pattern_path: str | None, threads: int, memory_mb: float, block_size: int) -> Any:
    from edgecloud.llm.config import EngineConfig
    from edgecloud.llm.engine import LLMEngine

    return LLMEngine(EngineConfig(model=model, block_size=block_size, kv_cache_memory_mb=memory_mb,
                                  num_threads=threads, kv_layer_pattern=pattern_path))


def _decode(engine: Any, request_id: str, prompt: list[int], steps: int) -> tuple[list[float], dict[str, Any]]:
    """Decodes ``steps`` tokens after ``prompt`` (its blocks already cached) and times each decode
    step; returns the times and the KV the request held while decoding."""
    from edgecloud.llm.sampling_params import SamplingParams

    engine.add_request(request_id, prompt, SamplingParams(temperature=0.0, max_tokens=steps + 1, ignore_eos=True))
    engine.step()  # the prompt's last block (the rest is a prefix hit) and the first token
    req = engine.scheduler.requests[request_id]
    cached = req.num_cached_tokens
    times = []
    held, tokens = [0] * len(engine.kv.groups), 0
    while engine.has_unfinished():
        held = [sum(1 for b in table if b >= 0) for table in req.block_tables]
        tokens = req.num_computed_tokens  # whose KV those blocks hold
        start = time.perf_counter()
        engine.step()
        times.append((time.perf_counter() - start) * 1e3)
    mc = engine.model_config
    element = torch.tensor([], dtype=engine.core.dtype).element_size()
    layer_block = 2 * engine.kv.block_size * mc.num_key_value_heads * mc.head_dim * element
    held_bytes = sum(n * len(group.layers) * layer_block for n, group in zip(held, engine.kv.groups, strict=True))
    return times, {"kv_bytes_per_token": round(held_bytes / tokens, 1), "held_blocks": held,
                   "cached_prompt_tokens": cached,
                   "pool_tokens": [pool.num_blocks * engine.kv.block_size for pool in engine.kv.pools]}


def _prefilled_blocks(engine: Any, prompt: list[int]) -> dict[str, Any]:
    """The prompt's blocks as ``export_blocks`` gives them, from a full prefill in ``engine``."""
    from edgecloud.llm.request import KVTransferParams
    from edgecloud.llm.sampling_params import SamplingParams

    engine.add_request("prefill", prompt, SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True),
                       kv_transfer=KVTransferParams(export=True))
    keys = None
    while engine.has_unfinished():
        for out in engine.step():
            keys = out.kv_block_keys if out.finished else keys
    assert keys, "the prefill exported its blocks"
    return engine.core.control("export_blocks", {"keys": keys, "unpin": True})


def _random_blocks(engine: Any, prompt: list[int]) -> dict[str, Any]:
    """The prompt's blocks under their real keys with random K/V: a decode step's cost does not
    depend on the values it reads, and this skips a long prefill on a loaded machine."""
    from edgecloud.llm.kv_cache import chain_keys, root_key

    bs = engine.kv.block_size
    keys = chain_keys(root_key(engine.kv.fingerprint), prompt, bs)
    mc = engine.model_config
    shape = (len(keys), mc.num_hidden_layers, bs, mc.num_key_value_heads, mc.head_dim)
    generator = torch.Generator().manual_seed(0)
    return {"keys": keys, "parents": [root_key(engine.kv.fingerprint), *keys[:-1]],
            "tokens": [prompt[i * bs : (i + 1) * bs] for i in range(len(keys))],
            "k": torch.randn(shape, generator=generator).to(engine.core.dtype),
            "v": torch.randn(shape, generator=generator).to(engine.core.dtype)}


def run_speed(
    model: str | None, pattern: LayerPattern, contexts: list[int], steps: int, threads: int, memory_mb: float,
    kv: str = "prefill", progress: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Decode step time (median and p90 over ``steps`` steps) and KV held per token, per method and
    context, from one full prefill (``kv="prefill"``; or random K/V under the prompt's keys,
    ``kv="random"``) handed over to every method's engine."""
    from edgecloud.llm.omniattn.quality import read_text as read

    if kv not in ("prefill", "random"):
        raise ValueError(f"kv must be prefill or random, got {kv!r}")
    torch.set_num_threads(threads)
    longest = max(contexts)
    source = _engine(model, None, threads, memory_mb, pattern.block_size)
    prompt = text_tokens(source.tokenizer, read(EVAL_FILES[0]), longest)
    exported = (_prefilled_blocks if kv == "prefill" else _random_blocks)(source, prompt)
    del source
    progress(f"speed: {len(exported['keys'])} blocks of {longest} tokens ({kv} KV) to hand over")
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("full", "omniattn", "streaming"):
            for context in sorted(contexts):
                method = next(m for m in methods_at(pattern, context, []) if m.name == name)
                path = None
                if method.pattern is not None:
                    path = str(Path(tmp) / f"{name}-{context}.json")
                    method.pattern.save(Path(path))
                engine = _engine(model, path, threads, memory_mb, pattern.block_size)
                # the prompt and the decoded tokens end at ``context`` (within the model's positions)
                length = context - steps - 1
                blocks = length // pattern.block_size
                part = {"keys": exported["keys"][:blocks], "parents": exported["parents"][:blocks],
                        "tokens": exported["tokens"][:blocks], "k": exported["k"][:blocks],
                        "v": exported["v"][:blocks]}
                engine.core.control("import_blocks", part)
                times, kv = _decode(engine, f"{name}-{context}", prompt[:length], steps)
                entry = method.case(context)
                entry.update(kv, step_ms=round(statistics.median(times), 3),
                             step_ms_p90=round(sorted(times)[int(0.9 * (len(times) - 1))], 3), steps=len(times))
                cases.append(entry)
                progress(f"speed: {name} at {context}: {entry['step_ms']} ms/step, "
                         f"{entry['kv_bytes_per_token']} KV bytes/token")
                del engine
    return cases


# -- report --------------------------------------------------------------------------------------


def merge_cases(*parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One case per (method, seed, context) with every field any part measured (a field a part
    left unmeasured, None, never hides another part's value). Needles of the same case measured in
    several parts (e.g. other depths) are pooled and their accuracy recomputed."""
    merged: dict[tuple[str, int | None, int], dict[str, Any]] = {}
    for part in parts:
        for case in part:
            entry = merged.setdefault((case["method"], case["seed"], case["context"]), {})
            needles = entry.get("needle", [])
            entry.update({k: v for k, v in case.items() if v is not None or k not in entry})
            if needles and "needle" in case:
                seen = {(n["depth"], n["key"]) for n in needles}
                entry["needle"] = needles + [n for n in case["needle"] if (n["depth"], n["key"]) not in seen]
                entry["needle_acc"] = round(sum(n["correct"] for n in entry["needle"]) / len(entry["needle"]), 4)
    for case in merged.values():
        for field in ("ppl", "needle_acc", "step_ms"):
            case.setdefault(field, None)
    return sorted(merged.values(), key=lambda c: (c["context"], c["method"], c["seed"] or 0))


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


def write_plot(result: dict[str, Any], path: Path) -> None:
    """Perplexity over full KV's (on the same tokens: each context scores other tokens, so raw
    perplexities do not compare across contexts), needle accuracy and decode step time against
    context, one line per method (random patterns: their mean); panels without data are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [{**c, "ppl_ratio": 1.0} if c["method"] == "full" and c.get("ppl") is not None else c
             for c in result["cases"]]
    panels = [(f, label) for f, label in (("ppl_ratio", "perplexity / full KV"), ("needle_acc", "needle accuracy"),
                                          ("step_ms", "decode step (ms)"), ("kv_bytes_per_token", "KV bytes/token"))
              if any(c.get(f) is not None for c in cases)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.4), squeeze=False)
    for axis, (field, label) in zip(axes[0], panels, strict=False):
        for method in ("full", "omniattn", "streaming", "random"):
            points: dict[int, list[float]] = {}
            for case in cases:
                if case["method"] == method and case.get(field) is not None:
                    points.setdefault(case["context"], []).append(case[field])
            if points:
                xs = sorted(points)
                axis.plot(xs, [statistics.mean(points[x]) for x in xs], marker="o", label=method)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("context (tokens)")
        axis.set_title(label)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(result.get("title", "OmniAttn"), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
