"""Which grammar library constrains decoding most cheaply on this CPU (issue #24)?

Compiles the JSON Schema of each held-out BFCL function (the arguments object) with llguidance,
xgrammar and outlines-core for SmolLM2-135M-Instruct's tokenizer, then walks the tokens of a
valid answer (the ground truth's arguments, as the HF tokenizer encodes them), timing for each
token what a decode step adds: computing the allowed-token mask and advancing the matcher.
Writes a JSON summary (medians and p90 over schemas).

    nice -n 19 .venv/bin/python scripts/netgpt_grammar_libs.py --json docs/data/netgpt_grammar_libs.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from edgecloud.edge.netgpt.bfcl import load_split
from edgecloud.llm.gguf import convert_gguf, default_model_path


def quantiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50": statistics.median(values),
        "p90": values[min(len(values) - 1, int(0.9 * len(values)))],
        "mean": statistics.fmean(values),
        "n": len(values),
    }


def run_llguidance(model_dir: Path, cases: list[tuple[str, list[int]]], vocab: int) -> dict[str, Any]:
    import llguidance
    import llguidance.torch as lt

    t0 = time.perf_counter()
    tok = llguidance.LLTokenizer(str(model_dir / "tokenizer.json"), n_vocab=vocab, eos_token=2)
    setup = time.perf_counter() - t0
    compile_s, per_token, failed = [], [], 0
    mask = lt.allocate_token_bitmask(1, vocab)
    for schema, ids in cases:
        t0 = time.perf_counter()
        matcher = llguidance.LLMatcher(tok, llguidance.LLMatcher.grammar_from_json_schema(schema))
        compile_s.append(time.perf_counter() - t0)
        steps = []
        for t in ids:
            t0 = time.perf_counter()
            lt.fill_next_token_bitmask(matcher, mask, 0)
            allowed = bool((mask[0, t // 32] >> (t % 32)) & 1)
            matcher.consume_token(t)
            steps.append(time.perf_counter() - t0)
            if not allowed or matcher.is_error():
                failed += 1
                break
        per_token.extend(steps)
    return {"setup_s": setup, "compile_s": quantiles(compile_s), "per_token_s": quantiles(per_token),
            "amortized_per_token_s": amortized(compile_s, per_token, cases), "rejected_valid_answers": failed}


def amortized(compile_s: list[float], per_token: list[float], cases: list[tuple[str, list[int]]]) -> float:
    """(all compile time + all per-token time) / tokens: what a request with a fresh schema pays per token."""
    return (sum(compile_s) + sum(per_token)) / max(1, sum(len(ids) for _, ids in cases[: len(compile_s)]))


def run_xgrammar(model_dir: Path, cases: list[tuple[str, list[int]]], vocab: int) -> dict[str, Any]:
    import transformers
    import xgrammar as xgr

    t0 = time.perf_counter()
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
    info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=vocab, stop_token_ids=[2])
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    setup = time.perf_counter() - t0
    compile_s, per_token, failed = [], [], 0
    mask = xgr.allocate_token_bitmask(1, vocab)
    for schema, ids in cases:
        t0 = time.perf_counter()
        matcher = xgr.GrammarMatcher(compiler.compile_json_schema(schema))
        compile_s.append(time.perf_counter() - t0)
        for t in ids:
            t0 = time.perf_counter()
            matcher.fill_next_token_bitmask(mask)
            allowed = bool((mask[0, t // 32] >> (t % 32)) & 1)
            ok = matcher.accept_token(t)
            per_token.append(time.perf_counter() - t0)
            if not (allowed and ok):
                failed += 1
                break
    return {"setup_s": setup, "compile_s": quantiles(compile_s), "per_token_s": quantiles(per_token),
            "amortized_per_token_s": amortized(compile_s, per_token, cases), "rejected_valid_answers": failed}


def run_outlines(model_dir: Path, cases: list[tuple[str, list[int]]], vocab: int, timeout_s: float
                 ) -> dict[str, Any]:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    t0 = time.perf_counter()
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokens: dict[str, list[int]] = {}
    for i in range(tokenizer.get_vocab_size()):
        if i == 2:
            continue
        # outlines-core takes tokens as the text they decode to (byte-level BPE markers undone)
        tokens.setdefault(tokenizer.decode([i], skip_special_tokens=False), []).append(i)
    vocabulary = Vocabulary(2, tokens)
    setup = time.perf_counter() - t0
    compile_s, per_token, failed, skipped = [], [], 0, 0
    mask = torch.zeros((vocab + 31) // 32, dtype=torch.int32)
    total_compile = 0.0
    for schema, ids in cases:
        if total_compile > timeout_s:
            skipped += 1
            continue
        t0 = time.perf_counter()
        try:
            guide = Guide(Index(build_regex_from_schema(schema), vocabulary))
        except Exception:
            failed += 1
            continue
        dt = time.perf_counter() - t0
        total_compile += dt
        compile_s.append(dt)
        for t in ids:
            t0 = time.perf_counter()
            guide.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())
            allowed = bool((mask[t // 32] >> (t % 32)) & 1)
            if allowed:
                guide.advance(t)
            per_token.append(time.perf_counter() - t0)
            if not allowed:
                failed += 1
                break
    return {"setup_s": setup, "compile_s": quantiles(compile_s) if compile_s else None,
            "per_token_s": quantiles(per_token) if per_token else None, "rejected_or_failed": failed,
            "skipped_after_compile_budget": skipped}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-schemas", type=int, default=40)
    parser.add_argument("--outlines-budget-s", type=float, default=120.0,
                        help="stop compiling with outlines-core after this much compile time")
    parser.add_argument("--json", default="docs/data/netgpt_grammar_libs.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_dir = convert_gguf(default_model_path())
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    cases = []
    for q in load_split().test[: args.num_schemas]:
        tool = q.tools[0]["function"]
        call = next(c for c in q.target_calls() if c["name"] == tool["name"])
        text = json.dumps(call["arguments"], ensure_ascii=False)
        cases.append((json.dumps(tool["parameters"]), tokenizer.encode(text, add_special_tokens=False).ids))
    result: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
        "num_schemas": len(cases),
        "tokens": sum(len(ids) for _, ids in cases),
    }
    result["llguidance"] = run_llguidance(model_dir, cases, vocab)
    print("llguidance", json.dumps(result["llguidance"]), flush=True)
    result["xgrammar"] = run_xgrammar(model_dir, cases, vocab)
    print("xgrammar", json.dumps(result["xgrammar"]), flush=True)
    result["outlines_core"] = run_outlines(model_dir, cases, vocab, args.outlines_budget_s)
    print("outlines_core", json.dumps(result["outlines_core"]), flush=True)
    result["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
