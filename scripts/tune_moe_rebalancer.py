"""Choose OmniPlacement's rebalancer settings on a tuning trace, never on the evaluation trace.

``edgecloud bench moe --prompt-set tune --trace-out tune.json`` records the trained MoE's routing on
other held-out text of the same two workloads (prose entries the evaluation does not use, and the
next 400 characters of the held-out code files). This script replays that trace through ``omni``
(the same replay as ``bench moe``: placement from ``history``, then prose, then the shift to code,
a layer migrated per step) for each setting of the window, trigger, minimum gain and load
estimate, and prints and writes the worst layer's max / mean per phase and EP size. The rule that
picks the setting is fixed before looking: the lowest mean over EP sizes of the worst of the three
phases (prose, code, code settled).

    python scripts/tune_moe_rebalancer.py tune.json --out docs/data/moe_tuning.json
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np

from edgecloud.llm.moe.bench import TRACE_REBALANCE, evaluate, read_traces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trace", type=Path, help="a tuning trace written by bench moe --prompt-set tune --trace-out")
    parser.add_argument("--ranks", default="2,4,8")
    parser.add_argument("--window", default="32")
    parser.add_argument("--trigger", default="1.10")
    parser.add_argument("--min-gain", default="0.05")
    parser.add_argument("--shift-tv", default="none,0.1,0.15,0.2,0.25,0.3")
    parser.add_argument("--half-life", default="none,96,192")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    traces = read_traces(args.trace)
    experts = traces["history"].counts.shape[2]
    ranks = [int(r) for r in args.ranks.split(",")]

    def options(text: str) -> list[float | None]:
        return [None if v == "none" else float(v) for v in text.split(",")]

    rows = []
    grid = itertools.product([int(w) for w in args.window.split(",")], [float(t) for t in args.trigger.split(",")],
                             [float(g) for g in args.min_gain.split(",")], options(args.shift_tv),
                             options(args.half_life))
    for window, trigger, min_gain, shift_tv, half_life in grid:
        if shift_tv is None and half_life is not None:
            continue  # the window alone has no older steps to weigh
        config = dataclasses.replace(TRACE_REBALANCE, window=window, trigger=trigger, min_gain=min_gain,
                                     shift_tv=shift_tv, half_life=half_life)
        worst = {}
        for r in ranks:
            slots = -(-experts // r) + 1
            cases, _ = evaluate(traces, r, slots, config, "tune", "trace")
            worst[r] = {c["phase"]: c["max_mean_load"] for c in cases if c["policy"] == "omni"}
        score = float(np.mean([max(phases.values()) for phases in worst.values()]))
        settings = {"window": window, "trigger": trigger, "min_gain": min_gain, "shift_tv": shift_tv,
                    "half_life": half_life}
        rows.append({**settings, "score": round(score, 4), "omni": worst})
        print(" ".join(f"{k}={v}" for k, v in settings.items()) + f": score {score:.4f} "
              + " ".join(f"EP{r} " + "/".join(f"{v:.3f}" for v in worst[r].values()) for r in ranks), flush=True)
    best = min(rows, key=lambda row: row["score"])
    print(f"chosen: {best}")
    if args.out:
        args.out.write_text(json.dumps({"trace": str(args.trace), "rule": "lowest mean over EP of the worst phase",
                                        "check_every": TRACE_REBALANCE.check_every, "rows": rows, "chosen": best},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
