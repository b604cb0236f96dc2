"""OmniPlacement's dynamic rebalancing: follow the measured load and re-place the layers that drift.

A plain object over per-step routing counts (no engine, no clock): ``observe(counts)`` takes one
step's top-k choices per expert ``[layers, experts]``, keeps the last ``window`` steps (the sliding
window of OmniPlacement's activation capture), and every ``check_every`` steps evaluates the live
placement on a load estimate. A layer whose rank imbalance (max / mean) on the estimate exceeds
``trigger`` gets an OmniPlacement from it; it is adopted when it lowers that layer's imbalance by at
least ``min_gain`` (as OmniPlacement's ``improvement_threshold``: a rebalance moves weights, so a
small gain is not worth it).

The estimate is the window alone (``shift_tv=None``, OmniPlacement's sliding window), or the window
plus everything older since the last detected workload shift, steps out of the window weighted
down with a ``half_life``. A shift is detected in a layer when the window's distribution of choices
over its experts is more than ``shift_tv`` (total variation) away from the older steps'; the
layer's older steps are then dropped, and so are its window's steps from before the last check
(the shift came after it). A short window alone follows a shift fast but fits every burst of a few requests
(a prefill of a few hundred tokens outweighs a decode step a hundredfold): the placement it gives
is tuned to the prompts that just passed, not to the next ones. The longer memory averages over
many requests of the same workload, and the detector keeps it from averaging over two workloads.

The adopted placement is aligned with the live one (``align``) so that only the experts that really
move are copied. The same object drives the engine (``MoEExecutor``), the replays of ``bench moe``
and the simulator (``edgecloud.sim.moe``).
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
    max_replicas: int | None = None  # replicas per expert (None: as many as the spare slots allow)
    shift_tv: float | None = None  # window-vs-older total variation that marks a shift (None: window only)
    half_life: float | None = None  # steps out of the window after which a step counts half (None: no decay)

    def __post_init__(self) -> None:
        for name in ("window", "check_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.shift_tv is not None and not 0.0 < self.shift_tv <= 1.0:
            raise ValueError(f"shift_tv must be in (0, 1] (a total variation distance), got {self.shift_tv}")
        if self.half_life is not None and self.half_life <= 0:
            raise ValueError(f"half_life must be > 0 steps, got {self.half_life}")
        if self.trigger < 1.0:
            raise ValueError(f"trigger must be >= 1.0 (a max/mean ratio), got {self.trigger}")
        if self.min_gain < 0:
            raise ValueError(f"min_gain must be >= 0, got {self.min_gain}")


@dataclass
class RebalanceEvent:
    step: int
    layers: list[int]
    before: list[float]  # imbalance of those layers on the load estimate, live placement
    after: list[float]  # ... with the new placement
    moved_slots: int


def total_variation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[layers]``: total variation distance between the per-layer distributions of two load
    matrices (0: the same shares, 1: disjoint experts; 0 where either has no load)."""
    sa, sb = a.sum(axis=1, keepdims=True), b.sum(axis=1, keepdims=True)
    tv = 0.5 * np.abs(a / np.where(sa > 0, sa, 1.0) - b / np.where(sb > 0, sb, 1.0)).sum(axis=1)
    return np.where((sa[:, 0] > 0) & (sb[:, 0] > 0), tv, 0.0)


class OmniRebalancer:
    def __init__(self, placement: Placement, config: RebalanceConfig = RebalanceConfig(),
                 history: np.ndarray | None = None) -> None:
        """``history``: the load the starting placement was computed from (``[layers, experts]``),
        the older steps of the estimate until a shift is detected."""
        self.config = config
        self.placement = placement
        self.window: deque[np.ndarray] = deque(maxlen=config.window)
        shape = (placement.num_layers, placement.num_experts)
        self.older = np.zeros(shape) if history is None else np.array(history, dtype=np.float64)
        if self.older.shape != shape:
            raise ValueError(f"history must be [{shape[0]}, {shape[1]}], got {self.older.shape}")
        self.decay = 1.0 if config.half_life is None else 0.5 ** (1.0 / config.half_life)
        self.steps = 0
        self.events: list[RebalanceEvent] = []
        self.shifts: list[tuple[int, list[int]]] = []  # (step, layers) where a shift was detected

    def observe(self, counts: np.ndarray) -> Placement | None:
        """One step's choices per expert; returns a new placement to migrate to, or None."""
        counts = np.array(counts, dtype=np.float64)  # a copy: a detected shift edits the window
        if counts.shape != (self.placement.num_layers, self.placement.num_experts):
            raise ValueError(f"counts must be [{self.placement.num_layers}, {self.placement.num_experts}], "
                             f"got {counts.shape}")
        if len(self.window) == self.window.maxlen:
            self.older = self.older * self.decay + self.window[0]
        else:
            self.older *= self.decay
        self.window.append(counts)
        self.steps += 1
        if self.steps % self.config.check_every:
            return None
        load = self.estimate()
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

    def estimate(self) -> np.ndarray:
        """The load the placement is checked against: the window, plus the older steps since the
        last detected shift (dropped here when the window has shifted away from them)."""
        recent = np.sum(self.window, axis=0)
        if self.config.shift_tv is None:
            return recent
        shifted = np.flatnonzero(total_variation(recent, self.older) > self.config.shift_tv)
        if shifted.size:
            # The shift came since the last check: what the window holds from before it goes too,
            # or it would flow into the older steps again.
            self.older[shifted] = 0.0
            for counts in list(self.window)[: max(0, len(self.window) - self.config.check_every)]:
                counts[shifted] = 0.0
            self.shifts.append((self.steps, shifted.tolist()))
            recent = np.sum(self.window, axis=0)
        return self.older + recent
