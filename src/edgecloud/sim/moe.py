"""Expert placement in the cluster simulator: static, EPLB and OmniPlacement on modelled
mixture-of-experts layers (OmniInfer, arXiv 2511.22481; issue #20, docs/moe.md). SIMULATED.

A ``SimInstance`` given an ``ExpertPlacementModel`` asks it, for every step it prices, how much the
step's routed experts are stretched by the placement. The model draws the step's routing: per
MoE layer a Zipf popularity over the experts in a random order (``RoutingModel``; the order is
redrawn at each workload shift), each of the step's tokens making ``k`` choices (multinomial). The
placement policy's live placement deals each expert's tokens evenly over its replicas; each EP
device then computes its tokens over the experts it holds that got any, priced by the engine's
``PerfModel.expert_time`` (roofline: weights read once per touched expert, FLOPs per token). The
step waits for the busiest device; the returned factor is that time over ``PerfModel``'s balanced
estimate, the ``moe_imbalance`` its ``step_time`` multiplies the routed experts by.

``omni`` runs the engine's ``OmniRebalancer`` on the drawn counts and migrates its new placements
as the engine does, a layer per step; a migrated layer's weights (each device the experts that
arrive in its slots) are copied from host memory at ``MigrationModel.bandwidth``, behind the step's
compute when ``pipelined`` (only a copy longer than the step shows) or before it.

``layers`` of the model's MoE layers are drawn (8 of DeepSeek-V3's 58 by default: the factor is
their mean, and migration bytes are scaled to all layers), which keeps a step's sampling and an
OmniPlacement search cheap enough to simulate thousands of steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgecloud.llm.moe.placement import (
    Placement,
    eplb_placement,
    max_over_mean,
    omni_placement,
    static_placement,
)
from edgecloud.llm.moe.rebalance import OmniRebalancer, RebalanceConfig
from edgecloud.llm.perf_model import Parallelism, PerfModel

POLICIES = ("static", "eplb", "omni")
# Simulated decode steps of tens of milliseconds, each with tens of thousands of choices per layer:
# a window of 16 steps, checked every 4; the engine's trigger and minimum gain.
SIM_REBALANCE = RebalanceConfig(window=16, check_every=4)


@dataclass(frozen=True)
class RoutingModel:
    """Synthetic skewed, drifting routing (the parameters every simulated figure states)."""

    zipf_s: float = 0.5  # per-layer expert popularity ~ 1 / rank^s
    shifts_s: tuple[float, ...] = ()  # simulated times at which every layer's popularity order is redrawn
    layers: int = 8  # MoE layers drawn per step
    history_steps: int = 64  # steps of routing the static placements are computed from
    history_tokens: int = 256  # tokens per history step
    seed: int = 0

    def __post_init__(self) -> None:
        if self.zipf_s < 0:
            raise ValueError(f"zipf_s must be >= 0, got {self.zipf_s}")
        for name in ("layers", "history_steps", "history_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if list(self.shifts_s) != sorted(self.shifts_s) or any(t <= 0 for t in self.shifts_s):
            raise ValueError(f"shifts_s must be increasing times > 0, got {self.shifts_s}")


@dataclass(frozen=True)
class MigrationModel:
    """How moved expert weights reach a device: ``bandwidth`` bytes/s per device from host memory
    (assumed: about half of PCIe Gen5 x16), behind the step's compute when ``pipelined``."""

    bandwidth: float = 25e9
    pipelined: bool = True

    def __post_init__(self) -> None:
        if self.bandwidth <= 0:
            raise ValueError(f"bandwidth must be > 0 bytes/s, got {self.bandwidth}")


@dataclass
class PlacementTally:
    """What the model saw over a run."""

    steps: int = 0
    migrated_bytes: float = 0.0  # over every device and every MoE layer of the model
    copy_s: float = 0.0  # time the copies took, summed over steps
    exposed_s: float = 0.0  # of which not hidden behind a step
    rebalances: int = 0
    layers_migrated: int = 0
    placement_cpu_s: float = 0.0  # this process's time computing placements (not simulated time)
    factors: list[float] = field(default_factory=list)  # per step: the experts' stretch
    dispatch: list[float] = field(default_factory=list)  # per step: the dispatch / combine stretch

    def as_dict(self) -> dict[str, Any]:
        factors = np.array(self.factors) if self.factors else np.ones(1)
        dispatch = np.array(self.dispatch) if self.dispatch else np.ones(1)
        return {
            "steps": self.steps, "mean_factor": round(float(factors.mean()), 4),
            "p50_factor": round(float(np.median(factors)), 4), "p90_factor": round(float(np.quantile(factors, 0.9)), 4),
            "mean_dispatch_factor": round(float(dispatch.mean()), 4),
            "migrated_gb": round(self.migrated_bytes / 1e9, 3), "copy_s": round(self.copy_s, 4),
            "exposed_copy_s": round(self.exposed_s, 4), "rebalances": self.rebalances,
            "layers_migrated": self.layers_migrated, "placement_cpu_s": round(self.placement_cpu_s, 2),
        }


class ExpertPlacementModel:
    def __init__(self, perf: PerfModel, policy: str, routing: RoutingModel = RoutingModel(), spare_slots: int = 1,
                 rebalance: RebalanceConfig | None = None, migration: MigrationModel = MigrationModel()) -> None:
        moe = perf.model.moe
        if moe is None:
            raise ValueError(f"the model has no mixture-of-experts layers ({perf.model})")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        if spare_slots < 0:
            raise ValueError(f"spare_slots must be >= 0, got {spare_slots}")
        self.perf = perf
        self.policy = policy
        self.routing = routing
        self.migration = migration
        self.experts = moe.num_experts
        self.k = moe.experts_per_token
        self.devices = perf.parallel.devices
        self.layers = min(routing.layers, perf.model.num_moe_layers)
        self.layer_scale = perf.model.num_moe_layers / self.layers
        self.expert_bytes = perf.model.expert_params * perf.model.weight_bytes_per_param
        self.rng = np.random.default_rng(routing.seed)
        popularity = 1.0 / np.arange(1, self.experts + 1) ** routing.zipf_s
        popularity /= popularity.sum()
        # One popularity per workload phase: before the first shift, then after each.
        self.phases = [np.stack([self.rng.permutation(popularity) for _ in range(self.layers)])
                       for _ in range(len(routing.shifts_s) + 1)]
        history = sum(self._draw(self.phases[0], routing.history_tokens) for _ in range(routing.history_steps))
        base = -(-self.experts // self.devices)
        if policy == "static":
            self.placement = static_placement(self.layers, self.experts, self.devices)
        elif policy == "eplb":
            self.placement = eplb_placement(history, self.devices, base + spare_slots)
        else:
            self.placement = omni_placement(history, self.devices, base + spare_slots)
        self.rebalancer = (OmniRebalancer(self.placement, rebalance or RebalanceConfig(), history)
                           if policy == "omni" else None)
        self.target = self.placement
        self.pending: list[int] = []
        self.tally = PlacementTally()

    def _draw(self, popularity: np.ndarray, tokens: int) -> np.ndarray:
        return np.stack([self.rng.multinomial(tokens * self.k, row) for row in popularity]).astype(np.float64)

    def _phase(self, now: float) -> np.ndarray:
        return self.phases[sum(1 for t in self.routing.shifts_s if now >= t)]

    def step(self, num_tokens: int, now: float) -> tuple[float, float, float]:
        """One step of ``num_tokens`` tokens at simulated time ``now``: the factors that stretch its
        routed experts and its dispatch / combine, and the seconds of weight copying that go with it
        (a layer migrating)."""
        import time

        copy_s = 0.0
        if self.pending:  # one layer per step, before the forward pass, as ExpertRuntime migrates
            layer = self.pending.pop(0)
            before = self.placement
            self.placement = self.placement.with_layers(self.target, [layer])
            arriving = (before.slot_expert[layer] != self.placement.slot_expert[layer]) & (
                self.placement.slot_expert[layer] >= 0)
            per_device = arriving.reshape(self.devices, -1).sum(axis=1)
            copy_s = float(per_device.max()) * self.expert_bytes / self.migration.bandwidth
            self.tally.migrated_bytes += float(per_device.sum()) * self.expert_bytes * self.layer_scale
            self.tally.layers_migrated += 1
        counts = self._draw(self._phase(now), num_tokens)
        factor, dispatch = self._factors(counts, num_tokens)
        if self.rebalancer is not None:
            started = time.process_time()
            new = self.rebalancer.observe(counts)
            self.tally.placement_cpu_s += time.process_time() - started
            if new is not None:
                self.tally.rebalances += 1
                changed = np.flatnonzero(new.moved_slots(self.target)).tolist()
                self.target = new
                self.pending = sorted(set(self.pending) | set(changed))
        self.tally.steps += 1
        self.tally.factors.append(factor)
        self.tally.dispatch.append(dispatch)
        self.tally.copy_s += copy_s
        return factor, dispatch, copy_s

    def _factors(self, counts: np.ndarray, num_tokens: int) -> tuple[float, float]:
        """Mean over layers: the busiest device's routed-expert time over PerfModel's balanced
        estimate, and the busiest device's routed tokens over the mean."""
        placement: Placement = self.placement
        replicas = np.maximum(placement.replica_counts(), 1)
        table = placement.slot_expert
        held = np.maximum(table, 0)
        per_slot = np.where(table >= 0, np.take_along_axis(counts / replicas, held, axis=1), 0.0)
        shape = (self.layers, self.devices, placement.slots_per_rank)
        tokens = per_slot.reshape(shape).sum(axis=2)
        touched = (per_slot > 0).reshape(shape).sum(axis=2)
        cache: dict[tuple[float, int], float] = {}
        worst = 0.0
        for layer in range(self.layers):
            times = []
            for device in range(self.devices):
                key = (float(tokens[layer, device]), int(touched[layer, device]))
                if key not in cache:
                    cache[key] = self.perf.expert_time(*key)
                times.append(cache[key])
            worst += max(times)
        expected_touched = self.experts * (1.0 - (1.0 - self.k / self.experts) ** num_tokens)
        balanced = self.perf.expert_time(num_tokens * self.k / self.devices, expected_touched / self.devices)
        dispatch = float(max_over_mean(tokens).mean())
        return (worst / self.layers / balanced if balanced > 0 else 1.0), dispatch

    def exposed(self, copy_s: float, step_s: float) -> float:
        """The part of a step's weight copy that lengthens it."""
        extra = max(0.0, copy_s - step_s) if self.migration.pipelined else copy_s
        self.tally.exposed_s += extra
        return extra


def run_case(model: str, hardware: str, devices: int, policy: str, batch: int, *, prompt_len: int = 1024,
             output_len: int = 256, requests: int | None = None, routing: RoutingModel = RoutingModel(),
             spare_slots: int = 1, rebalance: RebalanceConfig | None = None,
             migration: MigrationModel = MigrationModel(), data_parallel_attention: bool = True) -> dict[str, Any]:
    """One instance of ``model`` on ``devices`` x ``hardware`` (experts over all of them, attention
    data-parallel unless told otherwise) serving a closed loop of ``batch`` requests at a time
    (``requests`` in all, default 2 x batch) of ``prompt_len`` random prompt tokens and
    ``output_len`` generated ones. SIMULATED."""
    import time

    from edgecloud.cluster.policies import make_policy
    from edgecloud.sim.run import SimClusterSpec, build_instances
    from edgecloud.sim.simulator import Backlog, ClusterSimulator, SimRequest

    spec = SimClusterSpec(model=model, hardware=hardware, mixed=1, devices=devices, max_num_seqs=batch,
                          max_num_batched_tokens=max(8192, batch + prompt_len), enable_prefix_caching=False)
    instances, link, max_len = build_instances(spec)
    instance = instances[0]
    if data_parallel_attention:
        instance.perf = PerfModel(instance.perf.hw, instance.perf.model, Parallelism(devices, True))
    experts = ExpertPlacementModel(instance.perf, policy, routing, spare_slots, rebalance, migration)
    instance.experts = experts
    rng = np.random.default_rng(routing.seed + 1)
    total = requests or 2 * batch
    if prompt_len + output_len > max_len:
        raise ValueError(f"prompt_len + output_len = {prompt_len + output_len} exceeds {model}'s {max_len} tokens")
    workload = [SimRequest(0.0, rng.integers(0, 1000, prompt_len).tolist(), output_len) for _ in range(total)]
    sim = ClusterSimulator(instances, make_policy("round-robin"), transfer=link, record_token_times=False)
    started = time.process_time()
    result = sim.run([], backlog=Backlog(workload, batch))
    tpots = np.array([r.tpot for r in result.records if r.tpot is not None])
    ttfts = np.array([r.ttft for r in result.records if r.ttft is not None])
    tokens = sum(r.output_tokens for r in result.records)
    return {
        "mode": "sim", "model": model, "hardware": hardware, "policy": policy, "ep": devices, "batch": batch,
        "data_parallel_attention": data_parallel_attention,
        "slots_per_rank": experts.placement.slots_per_rank,
        "max_mean_load": None, "step_ms": round(1000 * instance.busy_s / max(1, instance.num_steps), 3),
        "tpot_ms": round(1000 * float(np.median(tpots)), 3) if tpots.size else None,
        "tpot_p90_ms": round(1000 * float(np.quantile(tpots, 0.9)), 3) if tpots.size else None,
        "ttft_p50_ms": round(1000 * float(np.median(ttfts)), 3) if ttfts.size else None,
        "output_tokens_per_s": round(tokens / result.simulated_s, 1) if result.simulated_s > 0 else None,
        "simulated_s": round(result.simulated_s, 3), "requests": total, "prompt_len": prompt_len,
        "output_len": output_len, "expert_time_factor": experts.tally.as_dict(),
        "routing": {"zipf_s": routing.zipf_s, "shifts_s": list(routing.shifts_s), "layers_drawn": experts.layers,
                    "seed": routing.seed},
        "migration": {"bandwidth_gb_s": migration.bandwidth / 1e9, "pipelined": migration.pipelined},
        "cpu_s": round(time.process_time() - started, 2), "simulated": True,
    }


def hot_share(zipf_s: float, experts: int) -> float:
    """The hottest expert's share of a layer's choices over the mean share, for Zipf(``zipf_s``)."""
    weights = 1.0 / np.arange(1, experts + 1) ** zipf_s
    return float(weights[0] / weights.mean()) if experts else math.nan


@dataclass(frozen=True)
class MoESimSettings:
    """``edgecloud bench moe-sim``: each setup (``hardware:devices``) x skew x policy, one instance."""

    model: str = "deepseek-v3"
    setups: tuple[tuple[str, int], ...] = (("h100", 64), ("ascend910c", 128))
    batch_per_device: int = 64
    zipf: tuple[float, ...] = (0.2, 0.35, 0.5)
    shift_at_s: float | None = 2.0  # one workload shift (None: stationary routing)
    prompt_len: int = 64
    output_len: int = 96
    spare_slots: int = 1
    layers: int = 8
    rebalance: RebalanceConfig = field(default_factory=lambda: SIM_REBALANCE)
    migration: MigrationModel = field(default_factory=MigrationModel)
    seed: int = 0


def bench_moe_sim(settings: MoESimSettings) -> dict[str, Any]:
    """Every case of ``settings``, with omni's and eplb's TPOT against static's per setup and skew.
    SIMULATED."""
    cases, ratios = [], []
    for hardware, devices in settings.setups:
        for zipf_s in settings.zipf:
            routing = RoutingModel(zipf_s, () if settings.shift_at_s is None else (settings.shift_at_s,),
                                   settings.layers, seed=settings.seed)
            by_policy = {}
            for policy in POLICIES:
                case = run_case(settings.model, hardware, devices, policy, settings.batch_per_device * devices,
                                prompt_len=settings.prompt_len, output_len=settings.output_len, routing=routing,
                                spare_slots=settings.spare_slots, rebalance=settings.rebalance,
                                migration=settings.migration)
                case["max_mean_load"] = case["expert_time_factor"]["mean_dispatch_factor"]
                case["hot_expert_share"] = round(hot_share(zipf_s, case_experts(settings.model)), 2)
                cases.append(case)
                by_policy[policy] = case
            static = by_policy["static"]["tpot_ms"]
            ratios.append({
                "hardware": hardware, "ep": devices, "zipf_s": zipf_s, "batch": settings.batch_per_device * devices,
                **{f"{p}_tpot_vs_static": round(by_policy[p]["tpot_ms"] / static - 1, 4) for p in ("eplb", "omni")},
            })
    return {
        "simulated": True, "cases": cases, "tpot_change": ratios,
        "settings": {**{k: v for k, v in settings.__dict__.items() if k not in ("rebalance", "migration")},
                     "rebalance": settings.rebalance.__dict__, "migration": settings.migration.__dict__},
    }


def case_experts(model: str) -> int:
    from edgecloud.sim.profiles import load_model

    moe = load_model(model).profile.moe
    assert moe is not None
    return moe.num_experts


def plot_sim(path: str, report: dict[str, Any]) -> None:
    """TPOT per policy against the skew, one panel per setup. SIMULATED."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    setups = sorted({(c["hardware"], c["ep"]) for c in report["cases"]})
    fig, axes = plt.subplots(1, len(setups), figsize=(5.5 * len(setups), 3.8), squeeze=False)
    for axis, (hardware, ep) in zip(axes[0], setups, strict=True):
        for policy in POLICIES:
            rows = sorted((c["routing"]["zipf_s"], c["tpot_ms"]) for c in report["cases"]
                          if (c["hardware"], c["ep"], c["policy"]) == (hardware, ep, policy))
            axis.plot([r[0] for r in rows], [r[1] for r in rows], marker="o", label=policy)
        axis.set_title(f"SIMULATED {report['settings']['model']}, {ep} x {hardware}")
        axis.set_xlabel("routing skew (Zipf s per layer)")
        axis.set_ylabel("median TPOT (ms)")
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
