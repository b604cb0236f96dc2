"""Structured outputs at scale (issue #24 acceptance): ``json_schema`` strict on held-out BFCL
functions, every output validated with jsonschema, and the per-token cost of constrained decoding
measured beside unconstrained decoding of the same prompts in the same engine.

Three parts, because one is a count and the others timings:

    nice -n 19 .venv/bin/python scripts/netgpt_structured_bench.py --part validity \
        --num-outputs 500 --json docs/data/netgpt_structured.json --replay-out out/structured_answers.jsonl
    flock /tmp/edgecloud-bench.lock .venv/bin/python scripts/netgpt_structured_bench.py --part overhead \
        --json docs/data/netgpt_structured_overhead.json
    flock /tmp/edgecloud-bench.lock .venv/bin/python scripts/netgpt_structured_bench.py --part grammar \
        --replay out/structured_answers.jsonl --json docs/data/netgpt_structured_grammar.json

Each prompt asks for the arguments of one test function (the function's parameter schema is the
response schema, as a client would send it with ``response_format`` json_schema strict). The
engine is SmolLM2-135M-Instruct (or --model).

* **validity**: greedy over every (test question, offered function) pair, then sampled
  (temperature 0.8, seeded) to reach ``--num-outputs``; each output is parsed and validated with
  jsonschema; finish reasons are counted (``length``: the budget ended the answer, which
  budget-aware completion still closes as a valid document; counted apart). Not timed.
* **overhead**: ``--overhead-prompts`` of the greedy prompts, constrained, and unconstrained with
  each request held to the length its constrained answer had (``ignore_eos``), so both arms
  decode the same prompts for the same number of tokens. After one untimed warm-up pass of each
  (the grammar compiler's cache and the prefix cache warm for both), the arms alternate for
  ``--repeats`` rounds, all prompts in one batch and then one request at a time. The grammar's own
  work (mask + advance, replayed over the answers) is timed alone as well.
* **grammar**: the grammar's own work per token over the validity run's answers, without and with
  the budget rule (closing paths), alternating.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import torch

from edgecloud.bench.machine import cpu_model
from edgecloud.edge.netgpt.bfcl import load_split
from edgecloud.llm import LLM, SamplingParams
from edgecloud.llm.gguf import convert_gguf, default_model_path
from edgecloud.llm.structured import StructuredOutputsParams, json_schema_text


def cases(tokenizer: Any, n: int) -> list[tuple[list[int], dict[str, Any], str, bool]]:
    """``n`` (prompt ids, parameter schema, function name, sampled?) over the test functions."""
    pairs = [(q, tool["function"]) for q in load_split().test for tool in q.tools]
    out = []
    for i in range(n):
        q, fn = pairs[i % len(pairs)]
        messages = [{"role": "system", "content": f"Answer with the arguments for {fn['name']} as a JSON object."},
                    {"role": "user", "content": q.messages[-1]["content"]}]
        prompt = tokenizer.encode(tokenizer.apply_chat_template(messages), add_special_tokens=False)
        out.append((prompt, fn["parameters"], fn["name"], i >= len(pairs)))
    return out


def constrained(schema: dict[str, Any], max_tokens: int, sampled: bool, seed: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.8 if sampled else 0.0, seed=seed if sampled else None,
                          structured_outputs=StructuredOutputsParams(json_schema=json_schema_text(schema)))


def validity(llm: LLM, args: argparse.Namespace) -> dict[str, Any]:
    todo = cases(llm.tokenizer, args.num_outputs)
    start = time.perf_counter()
    outs = llm.generate([c[0] for c in todo], [constrained(c[1], args.max_tokens, c[3], i) for i, c in enumerate(todo)])
    seconds = time.perf_counter() - start
    valid, valid_stopped, valid_cut, failures, finish, tokens = 0, 0, 0, [], {}, 0
    replay = []
    for out, (_, schema, name, sampled) in zip(outs, todo, strict=True):
        c = out.outputs[0]
        tokens += len(c.token_ids)
        finish[c.finish_reason] = finish.get(c.finish_reason, 0) + 1
        replay.append({"schema": schema, "token_ids": list(c.token_ids)})
        try:
            jsonschema.validate(json.loads(c.text), schema)
            valid += 1
            valid_stopped += c.finish_reason == "stop"
            valid_cut += c.finish_reason == "length"
        except (json.JSONDecodeError, jsonschema.ValidationError) as error:
            failures.append({"function": name, "sampled": sampled, "text": c.text[:300],
                             "finish_reason": c.finish_reason, "error": str(error)[:200]})
    finished = sum(1 for o in outs if o.outputs[0].finish_reason == "stop")
    if args.replay_out is not None:  # the answers, for --part grammar
        args.replay_out.write_text("\n".join(json.dumps(r) for r in replay) + "\n")
    return {
        "num_outputs": len(outs), "greedy": sum(not c[3] for c in todo), "sampled": sum(c[3] for c in todo),
        "distinct_functions": len({c[2] for c in todo}), "max_tokens": args.max_tokens,
        "valid": valid, "valid_fraction": valid / len(outs), "finish_reasons": finish,
        "valid_of_finished": valid_stopped / max(finished, 1), "finished": finished,
        "valid_cut_by_max_tokens": valid_cut,
        "failures": failures[:20], "output_tokens": tokens, "seconds_untimed_niced": seconds,
    }


def timed(llm: LLM, prompts: list[list[int]], params: list[SamplingParams], one_at_a_time: bool) -> tuple[float, int]:
    start = time.perf_counter()
    if one_at_a_time:
        outs = [llm.generate([p], [s])[0] for p, s in zip(prompts, params, strict=True)]
    else:
        outs = llm.generate(prompts, params)
    return time.perf_counter() - start, sum(len(o.outputs[0].token_ids) for o in outs)


def overhead(llm: LLM, args: argparse.Namespace) -> dict[str, Any]:
    todo = cases(llm.tokenizer, args.overhead_prompts)
    prompts = [c[0] for c in todo]
    on = [constrained(c[1], args.max_tokens, False, 0) for c in todo]
    outs = llm.generate(prompts, on)  # warm-up: compiles every schema once (the compiler caches them)
    lengths = [max(1, len(o.outputs[0].token_ids)) for o in outs]
    off = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in lengths]
    llm.generate(prompts, off)  # warm-up of the unconstrained arm
    result: dict[str, Any] = {"prompts": len(prompts), "tokens_per_pass": sum(lengths), "modes": {}}
    for mode, one in (("batch", False), ("one_at_a_time", True)):
        runs: dict[str, list[float]] = {"constrained": [], "unconstrained": []}
        for _ in range(args.repeats):
            for arm, params in (("constrained", on), ("unconstrained", off)):
                seconds, tokens = timed(llm, prompts, params, one)
                if tokens != sum(lengths):
                    raise RuntimeError(f"{arm} pass wrote {tokens} tokens, expected {sum(lengths)}")
                runs[arm].append(1e3 * seconds / tokens)
        ratios = [c / u for c, u in zip(runs["constrained"], runs["unconstrained"], strict=True)]
        result["modes"][mode] = {
            "ms_per_token": runs, "ratio_per_repeat": ratios,
            "constrained_ms_per_token_median": statistics.median(runs["constrained"]),
            "unconstrained_ms_per_token_median": statistics.median(runs["unconstrained"]),
            "overhead_ms_per_token_median": statistics.median(
                c - u for c, u in zip(runs["constrained"], runs["unconstrained"], strict=True)),
            "ratio_median": statistics.median(ratios), "ratio_min_max": [min(ratios), max(ratios)],
        }
    backend = llm.engine.core.executor.structured  # type: ignore[attr-defined]
    start = time.perf_counter()
    for out, p in zip(outs, on, strict=True):
        assert p.structured_outputs is not None
        state = backend.start(p.structured_outputs)
        for i, t in enumerate(out.outputs[0].token_ids):
            backend.bitmask([state], [args.max_tokens - i])
            backend.accept(state, t, args.max_tokens - i)
    result["grammar_only_ms_per_token"] = 1e3 * (time.perf_counter() - start) / sum(lengths)
    return result


def grammar(llm: LLM, args: argparse.Namespace) -> dict[str, Any]:
    """The grammar's own work per token, replayed over the validity run's answers (``--replay``):
    mask + advance alone (as before budget-aware completion) and with the budget rule (closing
    paths kept, forced and checked), alternating for ``--repeats`` rounds. With ``--compare-with``
    (an earlier ``llm/structured.py``, e.g. ``git show REV:src/edgecloud/llm/structured.py``), its
    budget rule is a third arm on the same answers, and every arm's decisions (the mask, a
    replaced token) are compared with this one's."""
    backend = llm.engine.core.executor.structured  # type: ignore[attr-defined]
    backends: dict[str, Any] = {"mask_and_advance": backend, "with_budget": backend}
    if args.compare_with is not None:
        spec_ = importlib.util.spec_from_file_location("structured_before", args.compare_with)
        assert spec_ is not None and spec_.loader is not None
        module = importlib.util.module_from_spec(spec_)
        sys.modules[spec_.name] = module  # dataclasses look their module up there
        spec_.loader.exec_module(module)
        backends["with_budget_before"] = module.StructuredOutputs(backend.tokenizer_file, backend.vocab_size,
                                                                  backend.eos_token_ids)
    answers = [json.loads(line) for line in args.replay.read_text().splitlines() if line]
    specs = [StructuredOutputsParams(json_schema=json_schema_text(a["schema"])) for a in answers]
    for each in backends.values():
        for spec in specs:
            each.new_matcher(spec)  # compile every schema once (cached), outside the timing
    total = sum(len(a["token_ids"]) for a in answers)
    runs: dict[str, list[float]] = {arm: [] for arm in backends}
    work: dict[str, int] = {}
    for _ in range(args.repeats):
        for arm, each in backends.items():
            budgeted = arm != "mask_and_advance"
            backend.stats.clear()
            start = time.perf_counter()
            for spec, answer in zip(specs, answers, strict=True):
                state = each.start(spec, args.max_tokens if budgeted else None)
                for i, token in enumerate(answer["token_ids"]):
                    left = args.max_tokens - i if budgeted else None
                    each.bitmask([state], None if left is None else [left])
                    each.accept(state, token, left)
            runs[arm].append(1e6 * (time.perf_counter() - start) / total)
            if arm == "with_budget":
                work = dict(backend.stats)
    decisions: dict[str, list[tuple[bytes, int | None]]] = {}
    for arm, each in backends.items():  # untimed: what each budget rule decided, token by token
        if arm == "mask_and_advance":
            continue
        made = decisions.setdefault(arm, [])
        for spec, answer in zip(specs, answers, strict=True):
            state = each.start(spec, args.max_tokens)
            for i, token in enumerate(answer["token_ids"]):
                mask = each.bitmask([state], [args.max_tokens - i])
                made.append((mask.numpy().tobytes(), each.accept(state, token, args.max_tokens - i)))
    same = {arm: decisions[arm] == decisions["with_budget"] for arm in decisions if arm != "with_budget"}
    return {"answers": len(answers), "tokens": total, "us_per_token": runs,
            "us_per_token_median": {arm: statistics.median(v) for arm, v in runs.items()},
            "same_decisions_as_with_budget": same, "budget_rule_work": work,
            "compare_with": None if args.compare_with is None else str(args.compare_with)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("validity", "overhead", "grammar"), required=True)
    parser.add_argument("--model", default=None)
    parser.add_argument("--num-outputs", type=int, default=500)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--overhead-prompts", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--replay-out", type=Path, default=None, help="validity: write the answers here")
    parser.add_argument("--replay", type=Path, default=None, help="grammar: the answers to replay")
    parser.add_argument("--compare-with", type=Path, default=None,
                        help="grammar: an earlier llm/structured.py whose budget rule is timed beside this one")
    args = parser.parse_args()
    loadavg_before = os.getloadavg()
    model = args.model or str(convert_gguf(default_model_path()))
    llm = LLM(model=model, num_threads=args.threads, max_num_seqs=64, kv_cache_memory_mb=512, seed=0)
    if args.part == "grammar" and args.replay is None:
        parser.error("--part grammar needs --replay (a validity run's --replay-out)")
    parts = {"validity": validity, "overhead": overhead, "grammar": grammar}
    body = parts[args.part](llm, args)
    result = {"part": args.part, "model": model, **body, "cpu": cpu_model(), "torch_threads": torch.get_num_threads(),
              "engine_threads": args.threads, "nice": os.nice(0), "loadavg_before": loadavg_before,
              "loadavg_after": os.getloadavg()}
    args.json.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "failures"}, indent=1))


if __name__ == "__main__":
    main()
