"""``edgecloud bench ooco``: online and offline work on one cluster under the three pool policies
(``separate``, ``priority``, ``ooco``; ``edgecloud.cluster.ooco``), same cluster, same traffic.

Online traffic is the Azure conversation trace's arrival pattern, its rate scaled to the cluster:
load 1.0x is the rate at which ``separate``'s strict (online) instances just hold the SLOs
(>= 99% of requests within both the TTFT and the TPOT target), found by bisection on the
simulator; the sweep multiplies it. Offline work is a batch (the Azure code trace's lengths by
default) fed as the Batch API's runner feeds it: in order, a fixed number in flight. Per case:
offline tokens/s (prompt and generated tokens of offline work done, per second; and generated
only), online SLO attainment (both targets, and each alone), online TTFT/TPOT p99, preemptions.

Simulated (``mode: sim``): the cluster simulator (the engine's scheduler and KV manager, steps
priced by ``PerfModel``) with a hardware preset (16 H100, or Ascend 910C) and a model profile.
Every simulated row says so. The real CPU cluster runs are in ``edgecloud.sim.ooco_real``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgecloud.bench.traces import read_trace
from edgecloud.cluster.ooco import RELAXED, STRICT, FlexStepBudget, Roofline
from edgecloud.cluster.policies import make_policy
from edgecloud.llm.perf_model import StepShape
from edgecloud.sim.run import SimClusterSpec, build_instances, trace_workload_for
from edgecloud.sim.simulator import Backlog, ClusterSimulator, SimRecord, SimRequest, SimResult
from edgecloud.sim.workload import trace_requests

POLICIES = ("separate", "priority", "pd-priority", "ooco-pd", "ooco")
OOCO_POLICIES = ("ooco", "ooco-pd")
BASELINES = ("separate", "priority", "pd-priority")


@dataclass
class SimOOCOSettings:
    """A simulated cluster (``strict`` of its ``instances`` in the strict pool) and its traffic."""

    hardware: str = "h100"
    model: str = "llama-3-8b"
    instances: int = 16
    strict: int = 8
    devices: int = 1
    online_trace: str = "../shared/traces/azure_llm_2023_conv.csv"
    offline_trace: str = "../shared/traces/azure_llm_2023_code.csv"
    duration_s: float = 120.0  # online arrivals: the trace's first duration_s seconds (before scaling)
    drain_s: float = 30.0  # the run goes on this long after the last online arrival
    loads: Sequence[float] = (0.25, 0.5, 1.0, 1.5)
    policies: Sequence[str] = POLICIES
    ttft_slo_ms: float = 1000.0
    tpot_slo_ms: float = 50.0
    base_rate_scale: float | None = None  # the trace rate multiplier of load 1.0x; None: found by bisection
    offline_concurrency: int | None = None  # None: every instance's max_num_seqs
    max_num_seqs: int = 256
    seed: int = 0
    overflow: bool = True  # ooco: online prompts of a burst overflow to the strict pool (OOCO's ttft_slo_ms)
    abandon_flex_steps: bool = False  # an online arrival drops a flex-only step between layers (every policy)
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cluster(self) -> str:
        return (self.label or f"{self.instances} x {self.hardware} ({self.model}), {self.strict} strict + "
                f"{self.instances - self.strict} relaxed")


def pooled_instances(settings: SimOOCOSettings) -> tuple[list[Any], Any, int]:
    """The simulated instances, the first ``strict`` in the strict pool and the rest relaxed."""
    spec = SimClusterSpec(settings.model, settings.hardware, settings.instances, devices=settings.devices,
                          max_num_seqs=settings.max_num_seqs)
    instances, link, max_len = build_instances(spec)
    for i, instance in enumerate(instances):
        instance.pool = STRICT if i < settings.strict else RELAXED
    return instances, link, max_len


def offline_requests(settings: SimOOCOSettings, max_len: int, count: int) -> list[SimRequest]:
    """``count`` offline requests with the offline trace's lengths (cycled), random prompts; the
    same list for every case of a sweep."""
    return _offline_requests(settings.offline_trace, settings.seed, max_len, count)


@functools.cache
def _offline_requests(path: str, seed: int, max_len: int, count: int) -> list[SimRequest]:
    trace = read_trace(path)
    reps = math.ceil(count / len(trace))
    requests: list[SimRequest] = []
    for k in range(reps):
        part = trace_requests(trace, max_len=max_len, seed=seed + 1000 + k)
        requests += [replace(r, arrival_s=0.0, service_tier="flex") for r in part]
    return requests[:count]


def attainment(records: Sequence[SimRecord], ttft_s: float, tpot_s: float, end_s: float) -> dict[str, float]:
    """Online SLO attainment: a request counts if its TTFT and TPOT (its mean time per output
    token) are within the targets. One still running at the end of the run (``end_s``) is judged
    by what it had: its TTFT, and its TPOT so far ((end - first token) / (tokens - 1), an upper
    bound); one without a first token misses if it had waited longer than the TTFT target, and is
    left out otherwise (the run ended before it could be judged)."""
    ttft_ok, tpot_ok = [], []
    for r in records:
        if r.first_token_s is None:
            if end_s - r.arrival_s <= ttft_s:
                continue
            ttft_ok.append(False)
            tpot_ok.append(False)
            continue
        ttft_ok.append(r.first_token_s - r.arrival_s <= ttft_s)
        if r.finish_s is not None:
            tpot = r.tpot
        else:
            tpot = (end_s - r.first_token_s) / (r.output_tokens - 1) if r.output_tokens > 1 else None
        tpot_ok.append(tpot is None or tpot <= tpot_s)
    n = len(ttft_ok)
    if n == 0:
        return {"slo_attainment": math.nan, "ttft_attainment": math.nan, "tpot_attainment": math.nan}
    return {"slo_attainment": sum(a and b for a, b in zip(ttft_ok, tpot_ok, strict=True)) / n,
            "ttft_attainment": sum(ttft_ok) / n, "tpot_attainment": sum(tpot_ok) / n, "online_judged": n}


def _p99_ms(values: Sequence[float]) -> float | None:
    return float(np.percentile(values, 99) * 1000) if values else None


def flex_chunks(settings: SimOOCOSettings, policy: str, perf: Any, max_tokens: int) -> dict[str, int | None]:
    """Offline tokens per step on each pool (the engine's ``flex_max_batched_tokens``; None: the
    engine's default, ``max_num_seqs``). ``separate``'s relaxed instances serve only offline work:
    nothing to protect, the whole step budget. ``ooco``'s relaxed instances prefill online prompts
    but decode none: an offline chunk may take up to a quarter of the TTFT SLO (the roofline
    model's largest such chunk), which an online prompt arriving during it waits at most. Mixed
    instances (``priority``) and the strict pool keep the engine's default."""
    if policy == "separate":
        return {STRICT: None, RELAXED: max_tokens}
    if policy in (*OOCO_POLICIES, "pd-priority"):
        return {STRICT: None, RELAXED: Roofline(perf).prefill_chunk_within(settings.ttft_slo_ms / 4000, max_tokens)}
    return {STRICT: None, RELAXED: None}


def offline_bound_tok_s(perf: Any, instances: int, requests: Sequence[SimRequest], max_tokens: int,
                        sample: int = 1000) -> float:
    """An upper bound on any policy's offline tokens/s on this cluster, online work aside: every
    instance busy all the time with offline work, every token (prompt or generated) at the dense
    cost per token of a full step (``max_tokens``, its overhead amortised: no step does better),
    plus each prompt's own attention as if prefilled in one piece. Over the batch's first
    ``sample`` requests."""
    part = requests[:sample]
    if not part:
        return 0.0
    full = perf.step_cost([StepShape(max_tokens, max_tokens, False)])
    per_token = (full.total - full.attention) / max_tokens
    tokens = seconds = 0.0
    for r in part:
        prompt, output = len(r.prompt_token_ids), r.output_len
        seconds += (prompt + output) * per_token + perf.step_cost([StepShape(prompt, prompt, False)]).attention
        tokens += prompt + output
    return instances * tokens / seconds


def pool_policy(settings: SimOOCOSettings, policy: str, instances: Sequence[Any]) -> tuple[Any, dict[str, Any]]:
    """The policy object of one case, with its instances' offline step rules set: offline tokens
    per step per pool (``flex_chunks``), and on ``ooco``'s strict pool the roofline step budget.
    ``NAME+budget`` (e.g. ``priority+budget``, an ablation, not a baseline of the paper) gives
    every instance of policy NAME that roofline step budget instead of its fixed offline chunk."""
    perf = instances[0].perf
    name, _, variant = policy.partition("+")
    if variant not in ("", "budget"):
        raise ValueError(f"policy {policy!r}: the only variant is NAME+budget")
    chunks = flex_chunks(settings, name, perf, instances[0].config.max_num_batched_tokens)
    for instance in instances:
        if chunks[instance.pool] is not None:
            instance.scheduler.flex_max_batched_tokens = chunks[instance.pool]
    options: dict[str, Any] = {}
    if name in OOCO_POLICIES:
        options = {"perf": perf, "tpot_slo_ms": settings.tpot_slo_ms}
    if name == "ooco" and settings.overflow:
        options["ttft_slo_ms"] = settings.ttft_slo_ms
    policy_object = make_policy(name, **options)
    if name in OOCO_POLICIES or variant:
        budget = FlexStepBudget(perf, 0.9 * settings.tpot_slo_ms / 1000)
        for instance in instances:
            if instance.pool == STRICT or variant:
                instance.scheduler.flex_step_budget = budget
                instance.scheduler.flex_max_batched_tokens = instance.config.max_num_batched_tokens
    if "ttft_slo_ms" in options:
        # Online prompts that overflow to the strict pool are prefilled there in chunks of one
        # step within the TPOT budget, so the decodes beside them keep their TPOT.
        step = Roofline(perf).prefill_chunk_within(0.9 * settings.tpot_slo_ms / 1000,
                                                   instances[0].config.max_num_batched_tokens)
        for instance in instances:
            if instance.pool == STRICT:
                instance.scheduler.max_num_batched_tokens = step
    return policy_object, chunks


def run_case(settings: SimOOCOSettings, policy: str, rate_scale: float, with_offline: bool = True) -> dict[str, Any]:
    """One policy at one online rate: the case's row (and its simulator result)."""
    instances, link, max_len = pooled_instances(settings)
    online = trace_workload_for(settings.online_trace, max_len, duration_s=settings.duration_s,
                                rate_scale=rate_scale, seed=settings.seed)
    last = max((r.arrival_s for r in online), default=0.0)
    policy_object, chunks = pool_policy(settings, policy, instances)
    sim = ClusterSimulator(instances, policy_object, transfer=link, record_token_times=False,
                           abandon_flex_steps=settings.abandon_flex_steps)
    backlog = None
    if with_offline:
        concurrency = settings.offline_concurrency or settings.instances * settings.max_num_seqs
        # Enough that the batch never runs dry within the run, not more (memory: token lists).
        backlog = Backlog(offline_requests(settings, max_len, concurrency + 4000), concurrency)
    until = last + settings.drain_s
    result = sim.run(online, until_s=until, backlog=backlog)
    row = summarize_case(settings, policy, rate_scale, result, len(online), policy_object)
    row["flex_tokens_per_step"] = {pool: chunks[pool] or settings.max_num_seqs for pool in (STRICT, RELAXED)}
    if policy in OOCO_POLICIES or policy.endswith("+budget"):
        row["flex_tokens_per_step"][STRICT] = "roofline: 0.9 x TPOT SLO less the online work"
    if policy.endswith("+budget"):
        row["flex_tokens_per_step"][RELAXED] = row["flex_tokens_per_step"][STRICT]
    if backlog is not None:
        row["offline_bound_tok_s"] = offline_bound_tok_s(
            instances[0].perf, settings.instances, backlog.requests, instances[0].config.max_num_batched_tokens)
    return row


def summarize_case(settings: SimOOCOSettings, policy: str, rate_scale: float, result: SimResult,
                   num_online: int, policy_object: Any) -> dict[str, Any]:
    online = result.records[:num_online]
    offline = result.records[num_online:]
    span = result.simulated_s
    prompt_done = sum(r.prompt_tokens for r in offline if r.first_token_s is not None)
    generated = sum(r.output_tokens for r in offline)
    ttfts = [r.ttft for r in online if r.ttft is not None]
    tpots = [r.tpot for r in online if r.tpot is not None]
    row: dict[str, Any] = {
        "mode": "sim", "simulated": True, "cluster": settings.cluster, "policy": policy,
        "rate_scale": rate_scale, "online_requests": num_online,
        "offline_tok_s": (prompt_done + generated) / span if span else 0.0,
        "offline_output_tok_s": generated / span if span else 0.0,
        "offline_finished": sum(r.finish_s is not None for r in offline),
        "offline_trace": settings.offline_trace,
        **attainment(online, settings.ttft_slo_ms / 1000, settings.tpot_slo_ms / 1000, span),
        "online_ttft_ms_p99": _p99_ms(ttfts), "online_tpot_ms_p99": _p99_ms(tpots),
        "preemptions": sum(i.scheduler.num_preemptions for i in result.instances),
        "abandoned_steps": sum(i.num_abandoned_steps for i in result.instances),
        "simulated_s": span, "wall_s": result.wall_s,
        "ttft_slo_ms": settings.ttft_slo_ms, "tpot_slo_ms": settings.tpot_slo_ms,
    }
    if policy in OOCO_POLICIES:
        row.update(offline_on_strict=policy_object.pulled, offline_on_relaxed=policy_object.admitted,
                   linear_saturation_bs=policy_object.offline_batch, online_overflowed=policy_object.overflowed)
    return row


def find_base_rate(settings: SimOOCOSettings, target: float = 0.99, steps: int = 4) -> float:
    """The online rate multiplier at which ``separate``'s strict instances (online only) just hold
    the SLOs for ``target`` of the requests (bisection on a log scale)."""

    def holds(scale: float) -> bool:
        attained = run_case(settings, "separate", scale, with_offline=False)["slo_attainment"]
        print(f"SIMULATED separate online only, rate x{scale:.2f}: SLO attainment {attained:.3f}", flush=True)
        return attained >= target

    lo, hi = 1.0, 2.0
    if holds(lo):
        while holds(hi):
            lo, hi = hi, hi * 2
    else:
        while not holds(lo / 2):
            lo /= 2
        lo, hi = lo / 2, lo
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if holds(mid) else (lo, mid)
    return lo


def bench_sim(settings: SimOOCOSettings, progress: Any = None) -> list[dict[str, Any]]:
    base = settings.base_rate_scale or find_base_rate(settings)
    rows = []
    for load in settings.loads:
        for policy in settings.policies:
            row = run_case(settings, policy, base * load)
            row["online_load"] = load
            row["base_rate_scale"] = base
            rows.append(row)
            if progress is not None:
                progress(row)
    return rows
