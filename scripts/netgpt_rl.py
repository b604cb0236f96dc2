"""Schema-preserving RL rounds of NetGPT's edge model from the requests it offloaded (issue #24).

    nice -n 19 .venv/bin/python scripts/netgpt_rl.py --bench-dir out/netgpt-bench --rounds 3 \
        --alphas 0.5,0 --guided 2 --json docs/data/netgpt_rl.json --plot docs/figures/netgpt_rl.png

``--alphas``: one arm per value, run side by side in one process, round by round (the same
batches from the same seed; round 0 is the shared SFT start, evaluated once): ``alpha`` > 0 is
the composite objective (reverse KL + forward KL to SFT), ``0`` the plain reverse-KL run shown for
contrast. The JSON is rewritten after every round of every arm, so a run stopped early keeps
what it measured; its ``rounds`` are the first arm's (what ``edgecloud edge netgpt bench
--rounds-json`` reads), ``arms`` has them all.

Reads what ``edgecloud edge netgpt bench --work-dir DIR`` saved: the calibration questions (train
functions) with the edge's scores and the cloud's answers, and the calibration. The offloaded set
is the calibration questions the NetGPT rule sends to the cloud in the reference state; each round
samples ``--batch`` of them (``--guided N``: N of each prompt's ``--samples-per-prompt`` answers
decode under the tool-call grammar, the others unconstrained; rl.py), and after each round the
edge model is evaluated greedily and *unconstrained* on the test questions (batched:
left-padded, masked): accuracy (AST checker vs BFCL's answers), schema validity, and the offload
rate under the same threshold rule (the round-0 calibration and the reference state's threshold,
so only the edge's scores move).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from edgecloud.bench.machine import cpu_model
from edgecloud.edge.netgpt.bfcl import load_split, score
from edgecloud.edge.netgpt.examples import prompt_text
from edgecloud.edge.netgpt.models import adapter_dir
from edgecloud.edge.netgpt.policy import Calibration
from edgecloud.edge.netgpt.rl import RLConfig, answer_calls, rl_round, teacher_question
from edgecloud.edge.netgpt.score import SCORES, EdgeAnswer
from edgecloud.edge.netgpt.train import load_base
from edgecloud.llm.gguf import convert_gguf, default_model_path
from edgecloud.llm.structured import StructuredOutputs
from edgecloud.llm.tokenizer import Tokenizer


@torch.no_grad()
def greedy(model: Any, prompts: list[list[int]], eos: int, max_new: int) -> list[tuple[list[int], list[float]]]:
    """Greedy answers (up to and with EOS) and their token log-probabilities, the prompts decoded
    together (left-padded, masked) by transformers' ``generate``."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[eos] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                         eos_token_id=eos, pad_token_id=eos, output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[:, width:]
    logprobs = torch.log_softmax(torch.stack(out.logits, 1).float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    answers = []
    for row, lp in zip(tokens.tolist(), logprobs.tolist(), strict=True):
        n = row.index(eos) + 1 if eos in row else len(row)
        answers.append((row[:n], lp[:n]))
    return answers


def evaluate(model: Any, tests: list[tuple[Any, list[int]]], tokenizer: Tokenizer, eos: int, score_name: str,
             tau: float, batch: int = 8) -> dict[str, float]:
    correct = valid = offloaded = unfinished = 0
    scores = []
    for i in range(0, len(tests), batch):
        chunk = tests[i: i + batch]
        for (q, _), (ids, logprobs) in zip(chunk, greedy(model, [p for _, p in chunk], eos, 128), strict=True):
            text = tokenizer.decode([t for t in ids if t != eos])
            calls, ok = answer_calls(text, q.tools)
            valid += ok
            correct += bool(calls) and score(q, calls).correct
            unfinished += eos not in ids
            s = SCORES[score_name](EdgeAnswer(logprobs, [], ok))
            scores.append(s)
            offloaded += s < tau
    n = len(tests)
    return {"accuracy": correct / n, "schema_valid": valid / n, "offload_rate": offloaded / n,
            "score_mean": sum(scores) / n, "unfinished": unfinished / n}


def plot(arms: dict[str, dict[str, Any]], path: Path) -> None:
    """Offload rate, held-out accuracy and schema validity (unconstrained) per round, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for i, (name, arm) in enumerate(arms.items()):
        rounds = arm["rounds"]
        for ax, key in zip(axes, ("offload_rate", "accuracy", "schema_valid"), strict=True):
            ax.plot([r["round"] for r in rounds], [r[key] for r in rounds], marker="os^v"[i % 4],
                    linestyle=("-", "--", ":", "-.")[i % 4], markersize=max(8 - 2 * i, 3),
                    label=f"{name} (alpha {arm['alpha']})")
            ax.set_title(key.replace("_", " "))
            ax.set_xlabel("RL round")
            ax.set_ylim(-0.02, 1.02)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench-dir", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num-test", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--alphas", default=None,
                        help="comma-separated alpha per arm, run side by side (default: --alpha alone)")
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="save each arm's adapter, optimizer and RNG after every round here, and resume "
                        "from what is there (a run in parts: stop it any time, start it again with the same options)")
    for name, value in asdict(RLConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--stop-after-s", type=float, default=None,
                        help="with --state-dir: start no arm-round that the last one's duration says would end "
                        "after this many seconds of the run (a part that fits a time limit; resume for the rest)")
    parser.add_argument("--eval-batch", type=int, default=16, help="test questions decoded together")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = RLConfig(**{k: getattr(args, k) for k in asdict(RLConfig())})
    try:
        alphas = [float(a) for a in args.alphas.split(",")] if args.alphas else [config.alpha]
    except ValueError:
        parser.error(f"--alphas must be comma-separated numbers, got {args.alphas!r}")
    saved = json.loads((args.bench_dir / "rl_inputs.json").read_text())
    calibration = Calibration.from_dict(saved["calibration"])
    score_name, tau = saved["score"], saved["threshold"]
    base = convert_gguf(default_model_path())
    tokenizer = Tokenizer(base)
    eos = tokenizer.eos_token_id or 2
    split = load_split()
    by_id = {q.id: q for q in split.train + split.test}
    offloaded = [(teacher_question(by_id[r["id"]], r["cloud_calls"]),
                  tokenizer.encode(prompt_text(tokenizer, by_id[r["id"]]), add_special_tokens=False))
                 for r in saved["offloaded"] if r["cloud_calls"]]
    tests = [(by_id[i], tokenizer.encode(prompt_text(tokenizer, by_id[i]), add_special_tokens=False))
             for i in saved["test_ids"][: args.num_test]]
    from peft import PeftModel

    # --guided: that many samples a prompt decode under the tool-call grammar (rl.py's docstring)
    backend = (StructuredOutputs(base / "tokenizer.json", json.loads((base / "config.json").read_text())["vocab_size"],
                                 [eos]) if config.guided > 0 else None)

    start = time.monotonic()
    arms: dict[str, dict[str, Any]] = {}
    state: dict[str, tuple[Any, Any, torch.optim.Optimizer, random.Random, RLConfig]] = {}
    for alpha in alphas:
        name = "composite" if alpha > 0 else "reverse_kl"
        name = name if name not in arms else f"{name}_alpha_{alpha}"
        model = PeftModel.from_pretrained(load_base(base), adapter_dir("edge-sft"), is_trainable=True)
        trainable = [p for p in model.parameters() if p.requires_grad]
        sft_weights = [p.detach().clone() for p in trainable]
        arm_config = RLConfig(**{**asdict(config), "alpha": alpha})
        optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.0)
        state[name] = (model, _swap_in(trainable, sft_weights), optimizer, random.Random(config.seed), arm_config)
        arms[name] = {"alpha": alpha, "rounds": []}
    first = next(iter(state.values()))[0]
    if not _resume(args.state_dir, state, arms):
        # round 0: every arm starts from the same SFT adapter, so it is evaluated once
        zero = {"round": 0, **evaluate(first, tests, tokenizer, eos, score_name, tau, args.eval_batch),
                "elapsed_s": time.monotonic() - start, "loadavg": os.getloadavg()}
        print(json.dumps(zero), flush=True)
        for arm in arms.values():
            arm["rounds"].append(dict(zero))

    def write() -> None:
        args.json.write_text(json.dumps({
            "config": asdict(config), "rounds": next(iter(arms.values()))["rounds"], "arms": arms,
            "num_offloaded": len(offloaded), "num_test": len(tests), "calibration_points": calibration.num_samples,
            "threshold": tau, "score": score_name, "batch": args.batch, "rounds_planned": args.rounds,
            "cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "nice": os.nice(0)}, indent=1))
        if args.plot is not None:
            plot(arms, args.plot)

    write()
    _save(args.state_dir, state, arms)
    last_round_s = 0.0
    for r in range(1, args.rounds + 1):
        for name, (model, sft_model, optimizer, rng, arm_config) in state.items():
            if len(arms[name]["rounds"]) > r:
                continue  # done before the resume
            if args.stop_after_s is not None and time.monotonic() - start + last_round_s > args.stop_after_s:
                print(f"stopping before round {r} of {name}: {time.monotonic() - start:.0f} s used, the last "
                      f"round took {last_round_s:.0f} s (resume with the same options)", flush=True)
                return
            round_start = time.monotonic()
            batch = rng.sample(offloaded, min(args.batch, len(offloaded)))
            stats = rl_round(model, sft_model, optimizer, batch, arm_config, eos,
                             lambda ids: tokenizer.decode([t for t in ids if t != eos]), rng, backend)
            arms[name]["rounds"].append({
                "round": r, **evaluate(model, tests, tokenizer, eos, score_name, tau, args.eval_batch),
                "train": asdict(stats), "round_s": time.monotonic() - round_start,
                "elapsed_s": time.monotonic() - start, "loadavg": os.getloadavg()})
            print(name, json.dumps(arms[name]["rounds"][-1]), flush=True)
            write()
            _save(args.state_dir, state, arms)
            last_round_s = time.monotonic() - round_start


def _save(state_dir: Path | None, state: dict[str, Any], arms: dict[str, dict[str, Any]]) -> None:
    """Each arm's trainable weights, optimizer and RNG, and the rounds so far (written atomically)."""
    if state_dir is None:
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    for name, (model, _, optimizer, rng, _) in state.items():
        trainable = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        tmp = state_dir / f"{name}.pt.tmp"
        torch.save({"trainable": trainable, "optimizer": optimizer.state_dict(), "rng": rng.getstate(),
                    "rounds": arms[name]["rounds"]}, tmp)
        tmp.replace(state_dir / f"{name}.pt")


def _resume(state_dir: Path | None, state: dict[str, Any], arms: dict[str, dict[str, Any]]) -> bool:
    """Loads what ``_save`` wrote for every arm; ``False`` (nothing loaded) to start afresh."""
    if state_dir is None or not all((state_dir / f"{name}.pt").exists() for name in state):
        return False
    for name, (model, _, optimizer, rng, _) in state.items():
        saved = torch.load(state_dir / f"{name}.pt", weights_only=False)
        with torch.no_grad():
            for p, w in zip([p for p in model.parameters() if p.requires_grad], saved["trainable"], strict=True):
                p.copy_(w)
        optimizer.load_state_dict(saved["optimizer"])
        rng.setstate(saved["rng"])
        arms[name]["rounds"] = saved["rounds"]
        print(f"resumed {name} after round {saved['rounds'][-1]['round']}", flush=True)
    return True


def _swap_in(trainable: list[torch.nn.Parameter], weights: list[torch.Tensor]) -> Any:
    """A context in which ``trainable`` hold ``weights`` (the SFT adapter), restored after."""

    @contextlib.contextmanager
    def swapped() -> Iterator[None]:
        current = [p.detach().clone() for p in trainable]
        with torch.no_grad():
            for p, w in zip(trainable, weights, strict=True):
                p.copy_(w)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, w in zip(trainable, current, strict=True):
                    p.copy_(w)

    return swapped


if __name__ == "__main__":
    main()
