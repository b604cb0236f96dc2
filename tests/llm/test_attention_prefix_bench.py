"""Engine-level benchmark (``make bench``): decode TPOT with the prefix and paged backends.

Same model, same prompts, one process, offline API: a shared-prefix tree workload (one system
prompt, four templates, four requests per template) and the same number of unrelated prompts
of the same lengths. TPOT is end to end per request (decode steps that also prefill other
requests count), as a serving benchmark sees it. Prints and writes ``bench_engine_attention.json``
under ``$PAT_BENCH_OUT`` (default: the test's temporary directory). Timing is reported, never asserted.
``make bench-quick`` runs each backend once per workload instead of three times
(``bench_engine_attention_1_repeat.json``).
"""

from __future__ import annotations

import json
import os
import random
import statistics
from pathlib import Path

import pytest
import torch

from edgecloud.llm import LLM, SamplingParams
from edgecloud.llm.random_model import write_random_model

SYSTEM, TEMPLATE, REQUEST, TEMPLATES, PER_TEMPLATE, OUTPUT, REPEATS = 1536, 256, 32, 4, 4, 32, 3


def _prompts(shared: bool, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)

    def words(n: int) -> list[int]:
        return [rng.randrange(2, 500) for _ in range(n)]

    if not shared:
        return [words(SYSTEM + TEMPLATE + REQUEST) for _ in range(TEMPLATES * PER_TEMPLATE)]
    system = words(SYSTEM)
    return [system + template + words(REQUEST)
            for template in [words(TEMPLATE) for _ in range(TEMPLATES)] for _ in range(PER_TEMPLATE)]


def _tpot_ms(model: Path, backend: str, prompts: list[list[int]], threads: int) -> tuple[float, list[list[int]]]:
    llm = LLM(model=str(model), attention_backend=backend, kv_cache_memory_mb=256, max_num_seqs=16,
              max_num_batched_tokens=4096, num_threads=threads, dtype="float32")
    params = SamplingParams(temperature=0.0, max_tokens=OUTPUT, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))  # warm-up
    outs = llm.generate(prompts, params)
    tpots = [(o.metrics.finished_time - o.metrics.first_token_time) / (OUTPUT - 1) * 1e3 for o in outs]
    return statistics.median(tpots), [o.outputs[0].token_ids for o in outs]


@pytest.mark.bench
@pytest.mark.parametrize(
    "repeats",
    # the documented run (docs/pat.md); `make bench-quick` runs each backend once on each workload
    [REPEATS, pytest.param(1, marks=pytest.mark.bench_quick)],
    ids=["documented", "quick"],
)
def test_engine_tpot_prefix_vs_paged(repeats: int, tmp_path: Path) -> None:
    threads = int(os.environ.get("PAT_BENCH_THREADS", "1"))
    torch.set_num_threads(threads)
    model = write_random_model(tmp_path / "model", arch="llama", hidden_size=512, intermediate_size=1024,
                               num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                               max_position_embeddings=4096)
    result: dict[str, object] = {"threads": threads, "model": "llama, 4 layers, hidden 512, 8/2 heads, "
                                 "head dim 64, float32, random weights", "output_tokens": OUTPUT,
                                 "repeats": repeats, "statistic": "median over requests, median over repeats"}
    for workload, shared in (("shared_prefix", True), ("no_sharing", False)):
        prompts = _prompts(shared)
        runs: dict[str, list[float]] = {"paged": [], "prefix": []}
        for _ in range(repeats):  # the backends take turns: load from other processes hits both
            for backend, series in runs.items():
                tpot, ids = _tpot_ms(model, backend, prompts, threads)
                series.append(tpot)
                if backend == "paged":
                    want = ids
                assert ids == want
        paged_ms, prefix_ms = statistics.median(runs["paged"]), statistics.median(runs["prefix"])
        result[workload] = {"requests": len(prompts), "prompt_tokens": len(prompts[0]),
                            "paged_tpot_ms": round(paged_ms, 2), "prefix_tpot_ms": round(prefix_ms, 2),
                            "tpot_change": round(prefix_ms / paged_ms - 1, 3)}
    out = Path(os.environ.get("PAT_BENCH_OUT", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    name = "bench_engine_attention.json" if repeats == REPEATS else f"bench_engine_attention_{repeats}_repeat.json"
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    shared, alone = result["shared_prefix"], result["no_sharing"]
    print(f"HEADLINE pat: engine decode TPOT, prefix-aware vs paged attention: {shared['tpot_change']:+.1%} with "
          f"a shared prefix, {alone['tpot_change']:+.1%} without ({repeats} repeat(s), {threads} thread(s))")
