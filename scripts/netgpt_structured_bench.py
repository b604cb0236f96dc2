"""Structured outputs at scale (issue #24 acceptance): ``json_schema`` strict on held-out BFCL
functions, every output validated with jsonschema, and the per-token cost of constrained decoding
measured beside unconstrained decoding of the same prompts in the same engine.

    flock /tmp/edgecloud-bench.lock .venv/bin/python scripts/netgpt_structured_bench.py \
        --num-outputs 500 --json docs/data/netgpt_structured.json

Each prompt asks for the arguments of one test function (the function's parameter schema is the
response schema, as a client would send it with ``response_format`` json_schema strict). The
engine is SmolLM2-135M-Instruct (or --model), greedy for the first pass over the questions and
sampled (temperature 0.8, seeded) for the rest, so 500 outputs come from fewer questions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jsonschema
import torch

from edgecloud.edge.netgpt.bfcl import load_split
from edgecloud.llm import LLM, SamplingParams
from edgecloud.llm.gguf import convert_gguf, default_model_path
from edgecloud.llm.structured import StructuredOutputsParams, json_schema_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--num-outputs", type=int, default=500)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default="docs/data/netgpt_structured.json")
    args = parser.parse_args()
    loadavg_before = os.getloadavg()
    model = args.model or str(convert_gguf(default_model_path()))
    llm = LLM(model=model, num_threads=args.threads, max_num_seqs=64, kv_cache_memory_mb=512, seed=0)
    tok = llm.tokenizer
    cases = []
    for q in load_split().test:
        for tool in q.tools:
            cases.append((q, tool["function"]))
    prompts, params, schemas = [], [], []
    for i in range(args.num_outputs):
        q, fn = cases[i % len(cases)]
        messages = [{"role": "system", "content": f"Answer with the arguments for {fn['name']} as a JSON object."},
                    {"role": "user", "content": q.messages[-1]["content"]}]
        prompts.append(tok.encode(tok.apply_chat_template(messages), add_special_tokens=False))
        spec = StructuredOutputsParams(json_schema=json_schema_text(fn["parameters"]))
        sampled = i >= len(cases)
        params.append(SamplingParams(max_tokens=args.max_tokens, temperature=0.8 if sampled else 0.0,
                                     seed=i if sampled else None, structured_outputs=spec))
        schemas.append(fn["parameters"])
    start = time.perf_counter()
    outs = llm.generate(prompts, params)
    constrained_s = time.perf_counter() - start
    valid, failures, finish = 0, [], {}
    tokens = 0
    for out, schema in zip(outs, schemas, strict=True):
        c = out.outputs[0]
        tokens += len(c.token_ids)
        finish[c.finish_reason] = finish.get(c.finish_reason, 0) + 1
        try:
            jsonschema.validate(json.loads(c.text), schema)
            valid += 1
        except (json.JSONDecodeError, jsonschema.ValidationError) as error:
            failures.append({"text": c.text[:300], "finish_reason": c.finish_reason, "error": str(error)[:200]})
    # the same prompts unconstrained, each held to the length its constrained answer had
    free = [SamplingParams(max_tokens=max(1, len(o.outputs[0].token_ids)), temperature=p.temperature, seed=p.seed,
                           ignore_eos=True) for o, p in zip(outs, params, strict=True)]
    start = time.perf_counter()
    free_outs = llm.generate(prompts, free)
    free_s = time.perf_counter() - start
    free_tokens = sum(len(o.outputs[0].token_ids) for o in free_outs)
    # the grammar's own work, timed alone: compile, masks and advances replayed over the answers
    backend = llm.engine.core.executor.structured  # type: ignore[attr-defined]
    start = time.perf_counter()
    for out, p in zip(outs, params, strict=True):
        assert p.structured_outputs is not None
        matcher = backend.new_matcher(p.structured_outputs)
        for t in out.outputs[0].token_ids:
            backend.bitmask([matcher])
            backend.accept(matcher, t)
    grammar_s = time.perf_counter() - start
    result = {
        "model": model, "num_outputs": len(outs), "valid": valid, "valid_fraction": valid / len(outs),
        "finish_reasons": finish, "failures": failures[:20], "distinct_functions": len({id(f) for _, f in cases}),
        "output_tokens": tokens,
        "constrained_s": constrained_s, "unconstrained_s": free_s, "unconstrained_tokens": free_tokens,
        "constrained_ms_per_token": 1e3 * constrained_s / tokens,
        "unconstrained_ms_per_token": 1e3 * free_s / free_tokens,
        "grammar_only_s": grammar_s, "grammar_ms_per_token": 1e3 * grammar_s / tokens,
        "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "loadavg_before": loadavg_before, "loadavg_after": os.getloadavg(),
    }
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}, indent=1))


if __name__ == "__main__":
    main()
