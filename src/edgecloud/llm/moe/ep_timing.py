"""``edgecloud bench moe-ep``: does a real expert-parallel step take as long as its busiest rank's
expert work says? (docs/moe.md, "Real expert parallelism").

One engine serves the trained MoE with its experts over ``ep`` processes (gloo, one torch thread
each). The same batch of held-out code prompts is served again and again under several placements,
which take turns (ABCDE EDCBA ...) so that load from elsewhere hits them alike; the placement
changes between rounds (``ExpertRuntime.apply``), everything else (the processes, the dense
weights, the KV cache) stays. Placements, all with the same routing since outputs never depend on
placement:

* ``static``, ``eplb``, ``omni``: as ``bench moe``, placed from the routing of other prose prompts
  (``history``); the code prompts are a workload shift for them;
* ``omni-fit``: OmniPlacement from these prompts' own routing (what live rebalancing converges to);
* ``packed``: the experts in order of their load on these prompts, hottest first, contiguous (a
  deliberately bad placement that widens the range of imbalance).

Every step's rank loads are read from the routing counters: per MoE layer the busiest rank's
(token, expert) pairs, summed over layers (``critical_pairs``: the expert work the step waits for),
against the same sum of the mean rank (``mean_pairs``). The report gives per placement the median
prefill step, decode step and TPOT with bootstrap 95% intervals, the paired ratio of each
placement's prefill step to ``static``'s in the same round, and a least-squares line of step time
over ``critical_pairs`` for the prefill steps (the same tokens in every round: only the experts'
spread differs), with a bootstrap interval on its slope.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecloud.llm.moe.placement import Placement, eplb_placement, omni_placement, static_placement

PLACEMENTS = ("static", "eplb", "omni", "omni-fit", "packed")


def median_interval(values: list[float], resamples: int = 2000, seed: int = 0) -> list[float]:
    """Percentile-bootstrap 95% interval of the median."""
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    medians = np.median(data[rng.integers(0, len(data), size=(resamples, len(data)))], axis=1)
    return [float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))]


def fit_line(x: np.ndarray, y: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``y = a + b x`` by least squares; bootstrap 95% interval of ``b``; Pearson r."""
    b, a = np.polyfit(x, y, 1)
    rng = np.random.default_rng(seed)
    slopes = []
    for _ in range(resamples):
        pick = rng.integers(0, len(x), len(x))
        if np.ptp(x[pick]) > 0:
            slopes.append(np.polyfit(x[pick], y[pick], 1)[0])
    return {"intercept": float(a), "slope": float(b), "slope_ci": [float(np.percentile(slopes, 2.5)),
                                                                  float(np.percentile(slopes, 97.5))],
            "r": float(np.corrcoef(x, y)[0, 1]), "points": len(x)}


def packed_placement(load: np.ndarray, num_ranks: int) -> Placement:
    """Per layer the experts sorted by load, hottest first, ``E / R`` contiguous per rank."""
    layers, experts = load.shape
    per_rank = -(-experts // num_ranks)
    table = np.full((layers, num_ranks * per_rank), -1, dtype=np.int64)
    for layer in range(layers):
        order = np.argsort(-load[layer], kind="stable")
        table[layer, : len(order)] = order
    return Placement(table, num_ranks, experts)


def routing_load(model_dir: Path, texts: list[str], max_tokens: int) -> np.ndarray:
    """Top-k choices per MoE layer and expert when one process serves ``texts``."""
    from edgecloud.llm import LLM, SamplingParams

    llm = LLM(model=str(model_dir), dtype="float32", max_num_seqs=len(texts), num_threads=1,
              enable_prefix_caching=False)
    llm.generate(texts, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
    return np.array(llm.engine.core.control("expert_load", {})["expert_counts"], dtype=np.float64)


def plan_placements(history: np.ndarray, served: np.ndarray, ranks: int, spare_slots: int) -> dict[str, Placement]:
    layers, experts = history.shape
    slots = -(-experts // ranks) + spare_slots
    return {
        "static": static_placement(layers, experts, ranks),
        "eplb": eplb_placement(history, ranks, slots),
        "omni": omni_placement(history, ranks, slots),
        "omni-fit": omni_placement(served, ranks, slots),
        "packed": packed_placement(served, ranks),
    }


def measure(model_dir: Path, prompts: list[str], plan: dict[str, Placement], ranks: int, max_tokens: int,
            rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Serves ``prompts`` ``rounds`` times under each placement, taking turns; returns every step:
    ``round``, ``tokens``, ``seconds``, ``critical_pairs``, ``mean_pairs``, ``prefill``."""
    import torch

    from edgecloud.llm import LLM, SamplingParams
    from edgecloud.llm.moe.parallel import attach

    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    threads = torch.get_num_threads()
    steps: dict[str, list[dict[str, Any]]] = {name: [] for name in plan}
    llm = LLM(model=str(model_dir), dtype="float32", max_num_seqs=len(prompts), num_threads=1,
              enable_prefix_caching=False, max_num_batched_tokens=8192)
    engine = llm.engine
    executor = attach(engine.core, world_size=ranks, placement=plan["static"])
    try:
        runtime = executor.moe
        planned: list[int] = []
        engine.core.on_step = lambda p: planned.append(p.num_tokens)
        order = list(plan)
        for rnd in range(rounds):
            for name in order if rnd % 2 == 0 else order[::-1]:
                runtime.apply(plan[name], live=False)
                runtime.load(reset=True)
                before = np.zeros((len(runtime.layers), ranks))
                for i, text in enumerate(prompts):
                    engine.add_request(f"{rnd}-{name}-{i}", text, params)
                first = True
                while engine.has_unfinished():
                    t0 = time.perf_counter()
                    engine.step()
                    seconds = time.perf_counter() - t0
                    now = np.array(runtime.load()["rank_tokens"], dtype=np.float64)
                    delta, before = now - before, now
                    steps[name].append({"round": rnd, "tokens": planned[-1], "seconds": round(seconds, 6),
                                        "critical_pairs": float(delta.max(axis=1).sum()),
                                        "mean_pairs": float(delta.mean(axis=1).sum()), "prefill": first})
                    first = False
    finally:
        executor.shutdown()
        torch.set_num_threads(threads)
    return steps


def summarize(steps: dict[str, list[dict[str, Any]]], plan: dict[str, Placement], max_tokens: int,
              model: str, ranks: int) -> dict[str, Any]:
    cases = []
    prefill_by_round = {name: {s["round"]: s["seconds"] for s in rows if s["prefill"]} for name, rows in steps.items()}
    for name, rows in steps.items():
        prefill = [1000 * s["seconds"] for s in rows if s["prefill"]]
        decode = [1000 * s["seconds"] for s in rows if not s["prefill"]]
        rounds = sorted({s["round"] for s in rows})
        tpot = [1000 * sum(s["seconds"] for s in rows if s["round"] == r and not s["prefill"]) / max(1, max_tokens - 1)
                for r in rounds]
        pre = [s for s in rows if s["prefill"]]
        ratio_to_static = [prefill_by_round[name][r] / prefill_by_round["static"][r] for r in rounds]
        critical = sum(s["critical_pairs"] for s in rows) / len(rounds)
        mean = sum(s["mean_pairs"] for s in rows) / len(rounds)
        cases.append({
            "mode": "real", "model": model, "policy": name, "ep": ranks,
            "slots_per_rank": plan[name].slots_per_rank,
            "max_mean_load": round(critical / mean, 4),
            "prefill_max_mean_load": round(statistics.median(s["critical_pairs"] / s["mean_pairs"] for s in pre), 4),
            "step_ms": round(statistics.median(prefill + decode), 3),
            "prefill_step_ms": round(statistics.median(prefill), 3),
            "prefill_step_ms_ci": [round(v, 3) for v in median_interval(prefill)],
            "decode_step_ms": round(statistics.median(decode), 3),
            "decode_step_ms_ci": [round(v, 3) for v in median_interval(decode)],
            "tpot_ms": round(statistics.median(tpot), 3),
            "tpot_ms_ci": [round(v, 3) for v in median_interval(tpot)],
            "prefill_vs_static": round(statistics.median(ratio_to_static), 4),
            "prefill_vs_static_ci": [round(v, 4) for v in median_interval(ratio_to_static)],
            "rounds": len(rounds),
        })
    prefill = [s for rows in steps.values() for s in rows if s["prefill"]]
    decode = [s for rows in steps.values() for s in rows if not s["prefill"]]
    fits = {}
    for key, rows in (("prefill", prefill), ("decode", decode)):
        x = np.array([s["critical_pairs"] for s in rows])
        if np.ptp(x) > 0:
            fits[key] = fit_line(x, np.array([1000 * s["seconds"] for s in rows]))
    return {"cases": cases, "fits": fits}


def run(model_dir: Path, ranks: int = 2, spare_slots: int = 1, prompts: int = 8, max_tokens: int = 8,
        rounds: int = 20) -> dict[str, Any]:
    from edgecloud.bench.machine import LoadWatch
    from edgecloud.llm.moe.bench import workload_prompts

    texts = workload_prompts(model_dir, 24)
    history = routing_load(model_dir, texts["history"], 32)
    served = routing_load(model_dir, texts["code"][:prompts], max_tokens)
    plan = plan_placements(history, served, ranks, spare_slots)
    watch = LoadWatch.begin()
    steps = measure(model_dir, texts["code"][:prompts], plan, ranks, max_tokens, rounds)
    machine = watch.finish().as_dict()
    report = summarize(steps, plan, max_tokens, model_dir.name, ranks)
    report.update({"machine": machine, "ep": ranks, "prompts": prompts, "max_tokens": max_tokens, "rounds": rounds,
                   "steps": steps, "placements": {name: p.to_lists() for name, p in plan.items()}})
    return report


def plot(path: Path, report: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for axis, prefill in zip(axes, (True, False), strict=True):
        for name, rows in report["steps"].items():
            pts = [(s["critical_pairs"], 1000 * s["seconds"]) for s in rows if s["prefill"] == prefill]
            axis.scatter([p[0] for p in pts], [p[1] for p in pts], s=8, alpha=0.5, label=name)
        fit = report["fits"].get("prefill" if prefill else "decode")
        if fit:
            xs = np.array(axis.get_xlim())
            axis.plot(xs, fit["intercept"] + fit["slope"] * xs, color="black", linewidth=0.8,
                      label=f"fit: {1000 * fit['slope']:.2f} ms / 1000 pairs (r={fit['r']:.2f})")
        axis.set_xlabel("busiest rank's (token, expert) pairs, summed over MoE layers")
        axis.set_ylabel("step time (ms)")
        axis.set_title(f"EP={report['ep']}, {'prefill' if prefill else 'decode'} steps")
        axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
