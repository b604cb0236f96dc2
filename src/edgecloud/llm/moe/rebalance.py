"""OmniPlacement's dynamic rebalancing: follow the measured load and re-place the layers that drift.

A plain object over per-step routing counts (no engine, no clock): ``observe(counts)`` takes one
step's top-k choices per expert ``[layers, experts]``, keeps the last ``window`` steps (the sliding
window of OmniPlacement's activation capture), and every ``check_every`` steps evaluates the live
placement on the window's load. A layer whose rank imbalance (max / mean) exceeds ``trigger`` gets
an OmniPlacement from the window; it is adopted when it lowers that layer's imbalance by at least
``min_gain`` (as OmniPlacement's ``improvement_threshold``: a rebalance moves weights, so a small gain
is not worth it). The adopted placement is aligned with the live one (``align``) so that only the
experts that really move are copied. The same object drives the engine (``MoEExecutor``) and the
simulated runs of ``bench moe``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from edgecloud.llm.moe.placement import Placement, align, omni_placement


@dataclass(frozen=True)
class RebalanceConfig:
    window: int = 64  # steps of routing history the load estimate sums
    check_every: int = 16  # steps between evaluations
    trigger: float = 1.10  # a layer above this max/mean is re-placed ...
    min_gain: float = 0.05  # ... when the new placement lowers its max/mean by at least this
    max_replicas: int | None = None  # replicas per expert (None: one per rank at most)

    def __post_init__(self) -> None:
        for name in ("window", "check_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.trigger < 1.0:
            raise ValueError(f"trigger must be >= 1.0 (a max/mean ratio), got {self.trigger}")
        if self.min_gain < 0:
            raise ValueError(f"min_gain must be >= 0, got {self.min_gain}")


@dataclass
class RebalanceEvent:
    step: int
    layers: list[int]
    before: list[float]  # imbalance of those layers on the window, live placement
    after: list[float]  # ... with the new placement
    moved_slots: int


class OmniRebalancer:
    def __init__(self, placement: Placement, config: RebalanceConfig = RebalanceConfig()) -> None:
        self.config = config
        self.placement = placement
        self.window: deque[np.ndarray] = deque(maxlen=config.window)
        self.steps = 0
        self.events: list[RebalanceEvent] = []

    def observe(self, counts: np.ndarray) -> Placement | None:
        """One step's choices per expert; returns a new placement to migrate to, or None."""
        counts = np.asarray(counts, dtype=np.float64)
        if counts.shape != (self.placement.num_layers, self.placement.num_experts):
            raise ValueError(f"counts must be [{self.placement.num_layers}, {self.placement.num_experts}], "
                             f"got {counts.shape}")
        self.window.append(counts)
        self.steps += 1
        if self.steps % self.config.check_every:
            return None
        load = np.sum(self.window, axis=0)
        current = self.placement
        before = current.imbalance(load)
        hot = [layer for layer in range(current.num_layers) if before[layer] > self.config.trigger]
        if not hot:
            return None
        table = current.slot_expert.copy()
        table[hot] = omni_placement(load[hot], current.num_ranks, current.slots_per_rank,
                                    self.config.max_replicas).slot_expert
        candidate = align(Placement(table, current.num_ranks, current.num_experts), current)
        after = candidate.imbalance(load)
        adopt = [layer for layer in hot if after[layer] <= before[layer] - self.config.min_gain]
        if not adopt:
            return None
        new = current.with_layers(candidate, adopt)
        self.events.append(RebalanceEvent(self.steps, adopt, before[adopt].round(4).tolist(),
                                          after[adopt].round(4).tolist(), int(current.moved_slots(new).sum())))
        self.placement = new
        return new
