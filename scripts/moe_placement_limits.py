"""How far placement alone can take the trained MoE's real routing (issue #20, docs/moe.md).

For each recorded routing trace (``bench moe --trace-out``: history, prose, code; each phase is
waves of ``max_num_seqs`` prompts, a wave = one prefill step then its decode steps) and EP size, with
``spare`` redundant slots per rank, the worst layer's max / mean of OmniPlacement placed from:

* ``hindsight``: the load it is judged on (the phase, or the wave, itself): what the search reaches
  when the load is known; a placement's ceiling, not something a server can do;
* ``previous wave``: the wave before (what a sliding window that holds one wave sees);
* ``all previous waves``: every earlier wave of the same workload (the phase so far);

each judged on every wave of the phase after the first. The gap between hindsight and the others is
what the next wave's routing differs from what was seen, which no search can remove.

Usage: nice -n 19 .venv/bin/python scripts/moe_placement_limits.py TRACE.json [...] --json out.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from edgecloud.llm.moe.bench import read_traces
from edgecloud.llm.moe.placement import omni_placement


def waves(counts: np.ndarray) -> list[np.ndarray]:
    """Splits a phase ``[steps, layers, experts]`` at its prefill steps (the steps with more choices
    than the decode steps' mode): each wave's summed load ``[layers, experts]``."""
    per_step = counts.sum(axis=(1, 2))
    decode = np.bincount(per_step).argmax()
    starts = [i for i, c in enumerate(per_step) if c > decode] or [0]
    if starts[0] != 0:
        starts = [0, *starts]
    bounds = [*starts, len(counts)]
    return [counts[a:b].sum(axis=0) for a, b in itertools.pairwise(bounds) if b > a]


def worst(placement_load: np.ndarray, judged: np.ndarray, ranks: int, slots: int) -> float:
    return float(omni_placement(placement_load, ranks, slots).imbalance(judged).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", type=Path, nargs="+")
    parser.add_argument("--ranks", default="2,4,8")
    parser.add_argument("--spare", default="1,2")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for path in args.traces:
        traces = read_traces(path)
        for ranks in (int(r) for r in args.ranks.split(",")):
            for spare in (int(s) for s in args.spare.split(",")):
                for name, trace in traces.items():
                    if name == "history":
                        continue
                    experts = trace.counts.shape[2]
                    slots = -(-experts // ranks) + spare
                    ws = waves(trace.counts)
                    phase = trace.counts.sum(axis=0)
                    later = range(1, len(ws))
                    row = {
                        "trace": path.name, "phase": name, "ep": ranks, "spare_slots": spare,
                        "waves": len(ws),
                        "hindsight_phase": worst(phase, phase, ranks, slots),
                        "hindsight_wave": [worst(ws[k], ws[k], ranks, slots) for k in later],
                        "previous_wave": [worst(ws[k - 1], ws[k], ranks, slots) for k in later],
                        "all_previous_waves": [worst(sum(ws[:k]), ws[k], ranks, slots) for k in later],
                    }
                    rows.append(row)
                    print(f"{path.name:28} {name:6} EP={ranks} spare={spare} hindsight phase "
                          f"{row['hindsight_phase']:.3f}, per wave {np.round(row['hindsight_wave'], 3).tolist()}; "
                          f"from the previous wave {np.round(row['previous_wave'], 3).tolist()}; "
                          f"from all previous {np.round(row['all_previous_waves'], 3).tolist()}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
