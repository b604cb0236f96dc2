"""A simulated engine instance: the engine's own ``Scheduler`` and ``KVCacheManager``, stepped by
the simulator with a modelled executor that prices each step with the engine's ``PerfModel``.

Everything the real core decides (which requests run, chunked prefill, the token budget, prefix
cache hits by stable block keys, preemption, KV export and import) is decided here by the same
code; only the forward pass is replaced by its modelled duration. The instance is a ``Backend`` of
the router (``edgecloud.cluster.router``), exactly as a real one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgecloud.cluster.config import Role
from edgecloud.llm.kv_cache import KVCacheManager, LayerGroup
from edgecloud.llm.outputs import EngineCoreOutput, EngineStats
from edgecloud.llm.perf_model import PerfModel, StepShape
from edgecloud.llm.request_state import Request
from edgecloud.llm.scheduler import SampledTokens, Scheduler, SchedulerOutput
from edgecloud.sim.decode_run import DecodeCredit, DecodeRun
from edgecloud.sim.lazy_pool import LazyBlockPool

if TYPE_CHECKING:
    from edgecloud.sim.moe import ExpertPlacementModel

# The token every simulated step samples: requests replay a trace's lengths (``ignore_eos``), so
# which token comes out does not matter, only that one does.
SIM_TOKEN = 0


@dataclass(frozen=True)
class SimEngineConfig:
    """The engine options that shape scheduling, as ``EngineConfig`` names them."""

    num_blocks: int
    max_model_len: int
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True

    def __post_init__(self) -> None:
        for name in ("num_blocks", "max_model_len", "block_size", "max_num_seqs", "max_num_batched_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class SimInstance:
    def __init__(
        self, name: str, perf: PerfModel, config: SimEngineConfig, fingerprint: bytes, role: Role = "mixed",
        pool: str = "default",
    ) -> None:
        self.name = name
        self.role = role
        self.pool = pool
        self.perf = perf
        self.config = config
        num_layers = perf.model.num_layers
        # the engine's KV manager over a pool built as blocks are first taken (same decisions, same ids)
        self.kv = KVCacheManager([LayerGroup("full", tuple(range(num_layers)))], 1, config.block_size,
                                 fingerprint, config.enable_prefix_caching)
        self.kv.pools = [LazyBlockPool(config.num_blocks)]
        self.scheduler = Scheduler(self.kv, config.max_num_seqs, config.max_num_batched_tokens, config.max_model_len)
        self.healthy = True
        self.experts: ExpertPlacementModel | None = None  # set to price MoE steps by expert placement
        self.epoch = 0
        self.busy = False  # a step is in flight
        self.num_steps = 0
        self.busy_s = 0.0
        self._plan: SchedulerOutput | None = None
        self._order = 0
        self.run: DecodeRun | None = None  # the run of decode steps in flight (``start_run``)
        self.serial = 0  # bumped whenever the end of the step in flight moves (a run cut short)
        # set by the simulator while a run may be in flight: settles it before anyone reads stats
        self.observer: Callable[[SimInstance], None] | None = None

    # -- the router's Backend ---------------------------------------------------------------------

    @property
    def num_blocks(self) -> int:
        return self.config.num_blocks

    @property
    def max_num_batched_tokens(self) -> int:
        return self.config.max_num_batched_tokens

    def stats(self) -> EngineStats:
        if self.run is not None and self.observer is not None:
            self.observer(self)
        s, kv = self.scheduler, self.kv
        return EngineStats(
            num_waiting=len(s.waiting), num_running=len(s.running), num_free_blocks=kv.num_free_blocks,
            num_total_blocks=kv.num_blocks, kv_usage=kv.usage(), prefix_cache_queries=kv.prefix_queries,
            prefix_cache_hits=kv.prefix_hits, prompt_tokens_total=s.prompt_tokens_total,
            generation_tokens_total=s.generation_tokens_total, num_preemptions=s.num_preemptions,
            num_steps=self.num_steps,
        )

    # -- stepping ---------------------------------------------------------------------------------

    def add(self, req: Request) -> None:
        self._order += 1
        req.order = self._order
        self.scheduler.add(req)

    def start_step(self, now: float) -> float | None:
        """Plans a step at ``now``; returns its modelled duration, or None when there is nothing
        to run (idle, or waiting requests that cannot be admitted until something changes)."""
        if not self.scheduler.has_work():
            return None
        plan = self.scheduler.schedule(now)
        if not plan.scheduled and not plan.exhausted:
            return None
        self._plan = plan
        self.busy = True
        shapes = [StepShape(s.num_new_tokens, s.request.num_computed_tokens + s.num_new_tokens, s.samples)
                  for s in plan.scheduled]
        if self.experts is None:
            duration = self.perf.step_time(shapes)
        else:  # expert placement (edgecloud.sim.moe): the step's routing stretches its experts
            imbalance, dispatch, copy_s = self.experts.step(sum(s.num_new_tokens for s in shapes), now)
            duration = self.perf.step_time(shapes, imbalance, dispatch)
            duration += self.experts.exposed(copy_s, duration)
        self.busy_s += duration
        return duration

    def start_run(self, now: float) -> float | None:
        """``start_step``, extended to a run of pure decode steps where the plan allows
        (``edgecloud.sim.decode_run``); returns when the step or run ends, or None."""
        duration = self.start_step(now)
        if duration is None:
            return None
        plan = self._plan
        assert plan is not None
        if self.experts is None and type(self).start_step is SimInstance.start_step:
            self.run = DecodeRun.plan(self.scheduler, plan, self.perf, now, duration)
        return now + duration if self.run is None else self.run.ends[-1]

    def settle(self, now: float) -> tuple[DecodeCredit, float]:
        """Cuts the run in flight at ``now``: the steps that ended are applied, the one in flight
        becomes an ordinary step. Returns their tokens and when that step ends."""
        run = self.run
        assert run is not None, "settle without a run"
        done = run.steps_done(now)
        credit = self._apply_run(done)
        return credit, run.ends[done]

    def end_run(self) -> DecodeCredit:
        """The run's last step ended: applies the ones before it (``end_step`` applies the last)."""
        assert self.run is not None, "end_run without a run"
        return self._apply_run(self.run.num_steps - 1)

    def _apply_run(self, done: int) -> DecodeCredit:
        run = self.run
        assert run is not None
        self.run = None
        self._plan, credit = run.apply(self.scheduler, done, SIM_TOKEN)
        self.num_steps += done
        for duration in run.durations[1:done + 1]:
            self.busy_s += duration
        return credit

    def end_step(self) -> list[EngineCoreOutput]:
        """Applies the step planned by ``start_step``: every request that reached its last token
        samples one."""
        plan = self._plan
        assert plan is not None, "end_step without start_step"
        self._plan = None
        self.busy = False
        self.num_steps += 1
        sampled = SampledTokens(token_ids={s.request.request_id: SIM_TOKEN for s in plan.scheduled if s.samples})
        return self.scheduler.update(plan, sampled)
