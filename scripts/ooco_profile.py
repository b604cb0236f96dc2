"""Where OOCO's (and a baseline's) work goes in one simulated case of `edgecloud bench ooco` (issue
#19): per pool, the busy time and the tokens of each kind a second (online prefill and decode,
offline prefill and decode) and the step durations; per instance, the online prefills; for the
online requests that missed the TTFT SLO, when they arrived and how long their prompt took to
reach its decode stage. SIMULATED (16 H100, Llama-3-8B, as `bench ooco`):

    python scripts/ooco_profile.py ooco,priority 1.0 --base 386.346 [--offline-trace FILE] [--no-overflow]
        [--abandon] [--json out.json]
"""

import argparse
import collections
import json
from typing import Any

import numpy as np

from edgecloud.cluster.router import Router
from edgecloud.sim import ooco_bench as ob
from edgecloud.sim.instance import SimInstance


def profile(settings: ob.SimOOCOSettings, policy: str, load: float) -> dict[str, Any]:
    steps: list[tuple[str, float, int, int, int, int]] = []
    stage_begin: dict[str, float] = {}
    clock = [0.0]
    plan_step, begin, route = SimInstance.start_step, Router.begin, Router.route

    def start_step(self: SimInstance, now: float) -> float | None:
        duration = plan_step(self, now)
        if duration is not None and self._plan is not None:
            kinds = [0, 0, 0, 0]  # online prefill tokens, online decodes, offline prefill tokens, offline decodes
            for s in self._plan.scheduled:
                prefill = s.request.num_computed_tokens < s.request.num_prompt_tokens
                k = (0 if s.request.service_tier == "default" else 2) + (0 if prefill else 1)
                kinds[k] += s.num_new_tokens if prefill else 1
            steps.append((self.pool, duration, *kinds))
        return duration

    def routed(self: Router, req: Any, now: float) -> Any:
        clock[0] = now  # every step end retries the backlog: the clock to within a step
        return route(self, req, now)

    def began(self: Router, view: Any, req: Any, stage: str) -> Any:
        if req.service_tier == "default" and stage != "prefill":
            stage_begin[req.request_id] = clock[0]
        return begin(self, view, req, stage)

    SimInstance.start_step, Router.route, Router.begin = start_step, routed, began  # type: ignore[method-assign]
    try:
        instances, link, max_len = ob.pooled_instances(settings)
        online = ob.trace_workload_for(settings.online_trace, max_len, duration_s=settings.duration_s,
                                       rate_scale=settings.base_rate_scale * load, seed=settings.seed)
        policy_object, _ = ob.pool_policy(settings, policy, instances)
        sim = ob.ClusterSimulator(instances, policy_object, transfer=link, record_token_times=False,
                                  abandon_flex_steps=settings.abandon_flex_steps)
        concurrency = settings.instances * settings.max_num_seqs
        backlog = ob.Backlog(ob.offline_requests(settings, max_len, concurrency + 4000), concurrency)
        result = sim.run(online, until_s=max(r.arrival_s for r in online) + settings.drain_s, backlog=backlog)
    finally:
        SimInstance.start_step, Router.route, Router.begin = plan_step, route, begin  # type: ignore[method-assign]
    row = ob.summarize_case(settings, policy, settings.base_rate_scale * load, result, len(online), policy_object)
    span = result.simulated_s
    pools = {}
    for pool in sorted({s[0] for s in steps}):
        mine = np.array([s[1:] for s in steps if s[0] == pool])
        n = sum(1 for i in instances if i.pool == pool)
        pools[pool] = {
            "instances": n, "steps": len(mine), "busy_share": float(mine[:, 0].sum() / (span * n)),
            "online_prefill_tok_s": float(mine[:, 1].sum() / span),
            "online_decode_tok_s": float(mine[:, 2].sum() / span),
            "offline_prefill_tok_s": float(mine[:, 3].sum() / span),
            "offline_decode_tok_s": float(mine[:, 4].sum() / span),
            "step_ms_p50": float(np.median(mine[:, 0]) * 1000),
            "step_ms_p99": float(np.percentile(mine[:, 0], 99) * 1000),
            "offline_prefill_tokens_per_step": float(mine[:, 3].mean()),
            "online_decodes_per_step": float(mine[:, 2].mean()), "offline_decodes_per_step": float(mine[:, 4].mean()),
        }
    records = result.records[:len(online)]
    late = [r for r in records if r.ttft is None or r.ttft > settings.ttft_slo_ms / 1000]
    to_decode = [stage_begin[str(r.index)] - r.arrival_s for r in late if str(r.index) in stage_begin]
    return {
        **row, "online_load": load, "pools": pools,
        "online_prefills_by_instance": dict(sorted(collections.Counter(
            r.prefill_instance or r.instance for r in records).items())),
        "late": len(late),
        "late_arrivals_by_second": dict(sorted(collections.Counter(int(r.arrival_s) for r in late).items())),
        "late_decode_stage_s_p50": float(np.median(to_decode)) if to_decode else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("policies")
    parser.add_argument("load", type=float)
    parser.add_argument("--base", type=float, required=True, help="trace rate multiplier of load 1.0x")
    parser.add_argument("--offline-trace", default="../shared/traces/azure_llm_2023_code.csv")
    parser.add_argument("--no-overflow", action="store_true")
    parser.add_argument("--abandon", action="store_true", help="online arrivals drop flex-only steps between layers")
    parser.add_argument("--json")
    args = parser.parse_args()
    settings = ob.SimOOCOSettings(duration_s=8, drain_s=4, base_rate_scale=args.base,
                                  offline_trace=args.offline_trace, overflow=not args.no_overflow,
                                  abandon_flex_steps=args.abandon)
    rows = []
    for policy in args.policies.split(","):
        row = profile(settings, policy, args.load)
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("policy", "online_load", "offline_tok_s", "slo_attainment",
                                              "online_ttft_ms_p99", "online_tpot_ms_p99", "abandoned_steps", "late",
                                              "late_arrivals_by_second")}))
        for pool, numbers in row["pools"].items():
            print(f"  {pool}: " + ", ".join(f"{k} {v:.3g}" for k, v in numbers.items()))
        print("  online prefills by instance:", row["online_prefills_by_instance"], flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"note": "SIMULATED", "cases": rows}, f, indent=1)


if __name__ == "__main__":
    main()
