"""Where ``omni`` and ``eplb`` differ at the same slot budget (issue #20, docs/moe.md).

For a routing trace of ``bench moe`` (history, prose, code) and each EP size, one spare slot per
rank, per layer:

1. ``fit``: each policy placed from the history and judged on the history itself (the input window:
   what the replica choice and the packing reach on the load they are given);
2. ``next``: the same placements judged on the prose phase (same workload, other prompts: the
   prediction error of a placement from past requests, before any rebalancing);
3. ``replay``: ``bench moe``'s replay of the prose phase (omni's rebalancer running with the given
   settings) and of the code phase after the shift.

    nice -n 19 .venv/bin/python scripts/moe_omni_vs_eplb.py TRACE.json [--config-json moe_tuning.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from edgecloud.llm.moe.bench import TRACE_REBALANCE, evaluate, read_traces
from edgecloud.llm.moe.placement import eplb_placement, omni_placement


def compare(path: Path, ranks_list: list[int], config) -> list[dict]:
    traces = read_traces(path)
    history, prose = traces["history"].counts.sum(axis=0), traces["prose"].counts.sum(axis=0)
    experts = history.shape[1]
    rows = []
    for ranks in ranks_list:
        slots = -(-experts // ranks) + 1
        plan = {"omni": omni_placement(history, ranks, slots), "eplb": eplb_placement(history, ranks, slots)}
        cases, _ = evaluate(traces, ranks, slots, config, "m", "trace")
        replay = {(c["policy"], c["phase"]): c["max_mean_load"] for c in cases}
        for policy, placement in plan.items():
            row = {"trace": path.name, "ep": ranks, "policy": policy,
                   "fit_per_layer": placement.imbalance(history).round(4).tolist(),
                   "next_per_layer": placement.imbalance(prose).round(4).tolist(),
                   "replay": {phase: replay[policy, phase] for (p, phase) in replay if p == policy}}
            rows.append(row)
            print(f"{path.name:26} EP={ranks} {policy:4} fit {max(row['fit_per_layer']):.3f} "
                  f"{row['fit_per_layer']} next {max(row['next_per_layer']):.3f} {row['next_per_layer']} "
                  f"replay {row['replay']}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("traces", type=Path, nargs="+")
    parser.add_argument("--ranks", default="2,4,8")
    parser.add_argument("--config", type=json.loads, default={},
                        help='rebalancer settings over bench moe\'s, e.g. \'{"window": 64}\'')
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    config = dataclasses.replace(TRACE_REBALANCE, **args.config)
    rows = [row for path in args.traces for row in compare(path, [int(r) for r in args.ranks.split(",")], config)]
    if args.json:
        args.json.write_text(json.dumps({"rebalance": dataclasses.asdict(config), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
