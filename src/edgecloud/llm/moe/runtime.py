"""The MoE state of one rank: where experts live, what the router chose, and live migration.

``ModelRunner`` builds one ``ExpertRuntime`` for a model with MoE layers and hands it to every
module as ``StepContext.moe``. Per MoE layer it holds the logical -> physical map of the current
``Placement`` as device tensors (``LayerExperts``: each expert's replica slots, and which slots are
this rank's), and two routing counters accumulated on the device without a host sync: top-k choices
per logical expert and tokens per physical slot. ``load()`` reads them (the engine core's
``expert_load`` control op).

A new placement is applied between steps. ``apply(placement, live=True)`` queues the layers that
change; each step then migrates at most ``layers_per_step`` of them before its forward pass
(OmniPlacement's layer-by-layer pipelining): the slots that change get their expert's weights copied
from the host-side expert store (every expert of the layer, kept in CPU memory as OmniPlacement keeps
it; on a GPU the copy is asynchronous from pinned memory), and the layer's map switches with them.
No step ever sees a half-updated layer, and since a logical expert's weights are the same wherever
they live, no output changes. With expert parallelism every rank receives the same placement and
the same steps, so all ranks migrate the same layer in the same step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from edgecloud.llm.config import ModelConfig
from edgecloud.llm.moe.placement import Placement, max_over_mean, static_placement
from edgecloud.llm.outputs import MoEStats


@dataclass
class LayerExperts:
    """What one MoE layer reads for a step."""

    replicas: torch.Tensor  # [experts, max replicas] physical slot ids (padded with the first)
    num_replicas: torch.Tensor  # [experts]
    local_slot: torch.Tensor  # [physical slots] index into this rank's weights, -1 on other ranks
    expert_counts: torch.Tensor  # [experts] top-k choices so far (a view into the runtime's counters)
    slot_counts: torch.Tensor  # [physical slots] tokens dispatched to each slot so far
    rank: int
    world_size: int
    group: Any  # a torch.distributed process group when world_size > 1


class ExpertRuntime:
    def __init__(
        self,
        model: torch.nn.Module,
        config: ModelConfig,
        device: torch.device,
        rank: int = 0,
        world_size: int = 1,
        group: Any = None,
        layers_per_step: int = 1,
    ) -> None:
        assert config.moe is not None
        self.moe = config.moe
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self.group = group
        self.layers_per_step = layers_per_step
        self.layers = tuple(config.moe.layers)
        self.row = {layer: i for i, layer in enumerate(self.layers)}
        self.modules = {layer: model.model.layers[layer].mlp.experts for layer in self.layers}
        experts = config.moe.num_experts
        self.placement = static_placement(len(self.layers), experts, 1, experts)  # what loading built
        self.expert_counts = torch.zeros(len(self.layers), experts, dtype=torch.int64, device=device)
        # What the device counters held before their last reset (``load(reset=True)``, a migration):
        # with them the totals only grow, as Prometheus counters must.
        self._choices_before = np.zeros((len(self.layers), experts), dtype=np.int64)
        self._rank_tokens_before = np.zeros((len(self.layers), world_size), dtype=np.int64)
        self._slot_counts: list[torch.Tensor] = []
        self._maps: list[LayerExperts] = []
        self._store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._held = [np.arange(experts) for _ in self.layers]  # expert in each local slot
        self.pending: deque[int] = deque()  # layers still to migrate to ``target``
        self.target: Placement | None = None
        self.migrated_bytes = 0
        self.migrations = 0
        # Set by expert parallelism: called with every placement applied, before it takes effect,
        # to send it to the other ranks.
        self.on_apply: Callable[[Placement, bool], None] | None = None
        for row in range(len(self.layers)):
            self._slot_counts.append(torch.zeros(experts, dtype=torch.int64, device=device))
            self._maps.append(self._layer_map(row))

    # -- what modules read -----------------------------------------------------------------------

    def layer(self, layer_idx: int) -> LayerExperts:
        return self._maps[self.row[layer_idx]]

    def begin_step(self) -> ExpertRuntime:
        """Migrates the next queued layers (at most ``layers_per_step``); the runner calls it
        before each forward pass and passes the result as ``StepContext.moe``."""
        for _ in range(min(self.layers_per_step, len(self.pending))):
            self._migrate(self.pending.popleft())
        return self

    # -- placements ------------------------------------------------------------------------------

    def apply(self, placement: Placement, live: bool = True) -> int:
        """Switches to ``placement``: now (``live=False``, every layer before the next step) or a few
        layers per step (``live=True``). Returns how many layers change."""
        self._check(placement)
        current = self.target or self.placement
        if live and not _same_layout(placement, current):
            raise ValueError(
                f"a live migration keeps each rank's {current.slots_per_rank} slots; this placement has "
                f"{placement.slots_per_rank} (apply it with live=False)"
            )
        if self.on_apply is not None:
            self.on_apply(placement, live)
        changed = [row for row in range(len(self.layers))
                   if not np.array_equal(current.slot_expert[row], placement.slot_expert[row])
                   or current.num_ranks != placement.num_ranks]
        self.target = placement
        self.pending = deque(sorted(set(self.pending) | set(changed)))
        if not live:
            if not _same_layout(placement, self.placement):
                self.placement = placement  # every layer gets new tensors below, before any step
                self.pending = deque(range(len(self.layers)))
            while self.pending:
                self._migrate(self.pending.popleft())
        return len(changed)

    def _check(self, placement: Placement) -> None:
        if placement.num_ranks != self.world_size:
            raise ValueError(f"placement is for {placement.num_ranks} ranks, this model runs on {self.world_size}")
        if placement.num_layers != len(self.layers) or placement.num_experts != self.moe.num_experts:
            raise ValueError(
                f"placement covers {placement.num_layers} layers x {placement.num_experts} experts; the model "
                f"has {len(self.layers)} MoE layers x {self.moe.num_experts} experts"
            )

    def join_group(self, rank: int, group: Any, placement: Placement) -> None:
        """Becomes rank ``rank`` of ``placement.num_ranks``: keeps every expert host-side (the store
        migrations copy from) and only this rank's slots in the model, before any step."""
        self.prepare_store()
        self.rank, self.world_size, self.group = rank, placement.num_ranks, group
        self.target = None
        self.apply(placement, live=False)

    def _store_of(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every expert of a layer, host-side. Taken from the module the first time: loading put
        every expert in its own slot, in order."""
        if row not in self._store:
            module = self.modules[self.layers[row]]
            assert module.w13.shape[0] == self.moe.num_experts, "the store is taken before any sharding"
            pin = self.device.type == "cuda"
            w13, w2 = module.w13.detach().cpu().clone(), module.w2.detach().cpu().clone()
            self._store[row] = (w13.pin_memory(), w2.pin_memory()) if pin else (w13, w2)
        return self._store[row]

    def prepare_store(self) -> None:
        for row in range(len(self.layers)):
            self._store_of(row)

    def _migrate(self, row: int) -> None:
        assert self.target is not None
        store_w13, store_w2 = self._store_of(row)
        module = self.modules[self.layers[row]]
        slots = self.target.slots_per_rank
        mine = self.target.slot_expert[row, self.rank * slots : (self.rank + 1) * slots]
        held = self._held[row]
        with torch.no_grad():
            if module.w13.shape[0] != slots:
                # A new slot count (only with apply(live=False), before the next step): new tensors.
                for name in ("w13", "w2"):
                    old = getattr(module, name)
                    setattr(module, name, torch.nn.Parameter(
                        torch.zeros((slots, *old.shape[1:]), dtype=old.dtype, device=self.device), requires_grad=False))
                held = np.full(slots, -2)
            for index, expert in enumerate(mine.tolist()):
                if expert < 0 or held[index] == expert:
                    continue
                # Asynchronous from pinned host memory on a GPU; ordered before the next forward.
                module.w13[index].copy_(store_w13[expert], non_blocking=True)
                module.w2[index].copy_(store_w2[expert], non_blocking=True)
                moved = module.w13[index].numel() + module.w2[index].numel()
                self.migrated_bytes += moved * module.w13.element_size()
        self._held[row] = mine.copy()
        self.placement = self.placement.with_layers(self.target, [row])
        self._maps[row] = self._layer_map(row)
        self.migrations += 1

    def _layer_map(self, row: int) -> LayerExperts:
        placement = self.placement
        table = placement.slot_expert[row]
        experts = self.moe.num_experts
        replicas = [np.flatnonzero(table == e) for e in range(experts)]
        width = max(len(r) for r in replicas)
        padded = np.array([np.resize(r, width) for r in replicas], dtype=np.int64)
        slots = placement.slots_per_rank
        local = np.full(placement.num_slots, -1, dtype=np.int64)
        local[self.rank * slots : (self.rank + 1) * slots] = np.arange(slots)
        local[table < 0] = -1
        # A layer's slot counters restart with its map: they count tokens per slot of this map.
        self._keep_rank_tokens(row)
        self._slot_counts[row] = torch.zeros(placement.num_slots, dtype=torch.int64, device=self.device)
        return LayerExperts(
            replicas=torch.from_numpy(padded).to(self.device),
            num_replicas=torch.tensor([len(r) for r in replicas], dtype=torch.int64, device=self.device),
            local_slot=torch.from_numpy(local).to(self.device),
            expert_counts=self.expert_counts[row],
            slot_counts=self._slot_counts[row],
            rank=self.rank,
            world_size=self.world_size,
            group=self.group,
        )

    # -- counters --------------------------------------------------------------------------------

    def load(self, reset: bool = False) -> dict[str, Any]:
        """The routing counters (one host sync): ``expert_counts`` ``[moe layers][experts]`` (top-k
        choices per logical expert since the last reset), ``rank_tokens`` ``[moe layers][ranks]``
        (tokens each rank computed since its layer's last migration), their max / mean, and the
        live placement."""
        counts = self.expert_counts.cpu().numpy()
        placement = self.placement
        slots = [c.cpu().numpy() for c in self._slot_counts]
        rank_tokens = np.stack([s.reshape(placement.num_ranks, -1).sum(axis=1) for s in slots])
        result = {
            "layers": list(self.layers),
            "expert_counts": counts.tolist(),
            "rank_tokens": rank_tokens.tolist(),
            "max_mean_load": max_over_mean(rank_tokens.astype(np.float64)).tolist(),
            "placement": placement.to_lists(),
            "num_ranks": placement.num_ranks,
            "pending_layers": [self.layers[r] for r in self.pending],
            "migrated_bytes": self.migrated_bytes,
        }
        if reset:
            self._choices_before += counts
            for row in range(len(self.layers)):
                self._keep_rank_tokens(row)
            self.expert_counts.zero_()
            for s in self._slot_counts:
                s.zero_()
        return result

    def _keep_rank_tokens(self, row: int) -> None:
        """Adds a layer's slot counters, per rank, to the totals before they restart."""
        if self._rank_tokens_before.shape[1] != self.world_size:  # joined an EP group: before any step
            self._rank_tokens_before = np.zeros((len(self.layers), self.world_size), dtype=np.int64)
        if row < len(self._maps) and self._slot_counts[row].numel() == self.placement.num_slots:
            slots = self._slot_counts[row].cpu().numpy()
            self._rank_tokens_before[row] += slots.reshape(self.world_size, -1).sum(axis=1)

    def totals(self) -> MoEStats:
        """The routing counters since the engine started (the stats every step reports)."""
        counts = self.expert_counts.cpu().numpy() + self._choices_before
        rank_tokens = self._rank_tokens_before.copy()
        for row, slots in enumerate(self._slot_counts):
            if row < len(self._maps) and slots.numel() == self.placement.num_slots:
                rank_tokens[row] += slots.cpu().numpy().reshape(self.world_size, -1).sum(axis=1)
        return MoEStats(list(self.layers), counts.tolist(), rank_tokens.tolist(), int(self.migrated_bytes))


def _same_layout(a: Placement, b: Placement) -> bool:
    return a.num_ranks == b.num_ranks and a.num_slots == b.num_slots


def all_reduce_sum(tensor: torch.Tensor, group: Any) -> None:
    """In-place sum over the expert-parallel ranks (``parallel.Collective``: gloo on CPU)."""
    group.all_reduce(tensor)
