"""A simulated engine instance: the engine's own ``Scheduler`` and ``KVCacheManager``, stepped by
the simulator with a modelled executor that prices each step with the engine's ``PerfModel``.

Everything the real core decides (which requests run, chunked prefill, the token budget, prefix
cache hits by stable block keys, preemption, KV export and import) is decided here by the same
code; only the forward pass is replaced by its modelled duration. The instance is a ``Backend`` of
the router (``edgecloud.cluster.router``), exactly as a real one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edgecloud.cluster.config import Role
from edgecloud.llm.kv_cache import KVCacheManager, LayerGroup
from edgecloud.llm.outputs import EngineCoreOutput, EngineStats
from edgecloud.llm.perf_model import PerfModel, StepShape
from edgecloud.llm.request_state import Request, RequestStatus
from edgecloud.llm.scheduler import SampledTokens, ScheduledRequest, Scheduler, SchedulerOutput
from edgecloud.sim.decode_run import DecodeCredit, DecodeRun
from edgecloud.sim.incremental import AggregatePricer, LazyDecodes, decodable
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
        self._step_start = self._step_s = 0.0  # the step in flight: when it began, its modelled duration
        self._abandoned = False  # the step in flight is dropped between layers (``interrupt``)
        self.num_abandoned_steps = 0
        self._order = 0
        self.run: DecodeRun | None = None  # the run of decode steps in flight (``start_run``)
        self.serial = 0  # bumped whenever the end of the step in flight moves (a run cut short)
        # set by the simulator while a run may be in flight: settles it before anyone reads stats
        self.observer: Callable[[SimInstance], None] | None = None
        # incremental stepping (``edgecloud.sim.incremental``), set by ``enable_incremental``
        self.lazy: LazyDecodes | None = None
        self._pricer: AggregatePricer | None = None
        self._others: list[Request] = []  # running requests not in ``lazy`` (prefill chunks)
        self._lazy_plan: tuple[SchedulerOutput, int, int, list[Request], list[Request]] | None = None
        self._leave_incremental = False  # a request the incremental path does not cover came mid-step

    def enable_incremental(self) -> bool:
        """Steps this instance incrementally (``edgecloud.sim.incremental``) where it can: False
        (and nothing changed) for a subclass, MoE pricing, or a cost model or scheduler setting the
        incremental path does not cover."""
        s = self.scheduler
        pricer = AggregatePricer(self.perf)
        if (type(self) is not SimInstance or self.experts is not None or not pricer.ok or s.max_loras is not None
                or s.flex_step_budget is not None or len(self.kv.pools) != 1 or self.kv.compressed_groups
                or s.max_num_batched_tokens <= s.max_num_seqs or s.has_work() or self.busy):
            return False
        self.lazy, self._pricer = LazyDecodes(self.config.block_size), pricer
        return True

    def _disable_incremental(self) -> None:
        """A request the incremental path does not cover (another service tier) came in."""
        assert self.lazy is not None and not self.busy
        self.lazy.clear()
        self.lazy, self._pricer, self._others = None, None, []

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
        if self.lazy is not None and (req.service_tier != "default" or req.wait_for is not None):
            if self.busy:  # the step in flight ends incrementally; the next ones step as usual
                self._leave_incremental = True
            else:
                self._disable_incremental()
        self.scheduler.add(req)

    def start_step(self, now: float) -> float | None:
        """Plans a step at ``now``; returns its modelled duration, or None when there is nothing
        to run (idle, or waiting requests that cannot be admitted until something changes)."""
        if not self.scheduler.has_work():
            return None
        if self.lazy is not None:
            handled, duration = self._start_lazy_step(now)
            if handled:
                return duration
        plan = self.scheduler.schedule(now)
        if not plan.scheduled and not plan.exhausted:
            if self.lazy is not None:
                self._rebuild_lazy()
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
        self._step_start, self._step_s = now, duration
        return duration

    def interrupt(self, now: float) -> float | None:
        """Online work reached the instance mid-step: a step of ``flex`` work only is dropped after
        the layer in flight, as the engine core does (``EngineCore.interrupt``, docs/engine-core.md;
        not with MoE pricing). Returns when the dropped step ends (a whole number of layers after
        it began, each 1 / num_layers of the step), or None when the step goes on."""
        plan = self._plan
        if (not self.busy or plan is None or self._abandoned or self.run is not None or self.lazy is not None
                or self.experts is not None or not plan.scheduled
                or any(s.request.service_tier != "flex" for s in plan.scheduled)):
            return None
        layer_s = self._step_s / self.perf.model.num_layers
        ran = min(self._step_s, math.ceil((now - self._step_start) / layer_s - 1e-9) * layer_s)
        self.busy_s -= self._step_s - ran
        self._abandoned = True
        return self._step_start + ran

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
        if self._lazy_plan is not None:
            return self._end_lazy_step()
        plan = self._plan
        assert plan is not None, "end_step without start_step"
        self._plan = None
        self.busy = False
        if self._abandoned:  # no request advances (EngineCore._abandon): its tokens are computed again
            self._abandoned = False
            self.num_abandoned_steps += 1
            return self.scheduler.abandon(plan)
        self.num_steps += 1
        sampled = SampledTokens(token_ids={s.request.request_id: SIM_TOKEN for s in plan.scheduled if s.samples})
        outputs = self.scheduler.update(plan, sampled)
        if self.lazy is not None:  # after a step of the scheduler's own: who decodes lazily from now on
            self.lazy.step += 1
            self._rebuild_lazy()
        return outputs

    # -- incremental stepping (edgecloud.sim.incremental) -------------------------------------------

    def _rebuild_lazy(self) -> None:
        lazy = self.lazy
        assert lazy is not None
        if self._leave_incremental:
            self._leave_incremental = False
            self._disable_incremental()
            return
        lazy.clear()
        self._others = []
        max_len = self.scheduler.max_model_len
        for req in self.scheduler.running:
            if decodable(req):
                lazy.add(req, max_len)
            else:
                self._others.append(req)

    def _start_lazy_step(self, now: float) -> tuple[bool, float | None]:
        """Plans the step as ``Scheduler.schedule`` would, touching only what changes (module
        ``edgecloud.sim.incremental``): ``(True, duration or None when nothing runs)``, or
        ``(False, None)`` where the scheduler must plan it (every lazy request written back)."""
        s, kv, lazy = self.scheduler, self.kv, self.lazy
        assert lazy is not None and self._pricer is not None
        n = len(lazy)
        others = self._others
        # the running loop: each decode takes one token; a prefill chunk takes what the budget
        # leaves after every decode (the scheduler's ``budget - decodes_after``, whatever the order)
        start = s.max_num_batched_tokens - n
        decodes_after = sum(1 for r in others if r.num_tokens - r.num_computed_tokens == 1)
        used = 0
        chunks: list[tuple[Request, int]] = []
        for req in others:
            remaining = req.num_tokens - req.num_computed_tokens
            if remaining == 1:
                decodes_after -= 1
                num_new = 1
            else:
                num_new = min(remaining, start - used - decodes_after)
                if num_new <= 0:
                    continue
            chunks.append((req, num_new))
            used += num_new
        step = lazy.step
        crossing = lazy.crossing()
        blocks = sum(kv.blocks_for(lazy.offset[r] + step + 1) - len(r.block_tables[0]) for r in crossing)
        blocks += sum(max(0, kv.blocks_for(r.num_computed_tokens + k) - len(r.block_tables[0])) for r, k in chunks)
        if blocks > kv.num_free_blocks:  # the scheduler would preempt: its own step, from the true state
            lazy.clear()
            self._others = []
            return False, None
        grows = [(r.sort_key, r, lazy.offset[r] + step + 1) for r in crossing]
        grows += [(r.sort_key, r, r.num_computed_tokens + k) for r, k in chunks]
        grows.sort(key=lambda g: g[0])
        for _, req, target in grows:
            kv.grow(req, target)
        out = SchedulerOutput([ScheduledRequest(r, k) for r, k in chunks])
        budget = start - used
        if s.waiting and budget > 0:
            s._admit_waiting("default", out, budget)
            if len(out.scheduled) > len(chunks):
                others.extend(i.request for i in out.scheduled[len(chunks):])
                others.sort(key=lambda r: r.sort_key)
        s.note_scheduled(out, now)
        if not out.scheduled and not n:
            return True, None  # waiting requests that cannot be admitted until something changes
        shapes = [StepShape(i.num_new_tokens, i.request.num_computed_tokens + i.num_new_tokens, i.samples)
                  for i in out.scheduled]
        duration = self._pricer.step_time(shapes, n, lazy.context_sum())
        filling = lazy.filling()
        finishing = lazy.finishing.pop(step, [])
        self._lazy_plan = (out, n, len(chunks), filling, finishing)
        self.busy = True
        self.busy_s += duration
        return True, duration

    def _end_lazy_step(self) -> list[EngineCoreOutput]:
        """``Scheduler.update`` of the step, in running order, on the requests it changes."""
        assert self._lazy_plan is not None and self.lazy is not None
        out, n, num_running, filling, finishing = self._lazy_plan
        self._lazy_plan = None
        self.busy = False
        self.num_steps += 1
        s, kv, lazy = self.scheduler, self.kv, self.lazy
        done = set(finishing)
        touched = {id(r): r for r in filling}
        touched.update((id(r), r) for r in finishing)
        items: list[tuple[tuple[int, int, float, int], Request, ScheduledRequest | None]] = [
            (r.sort_key, r, None) for r in touched.values()]
        # the scheduler's update goes through the plan: the running requests in running order, then
        # the ones admitted at this step, in the order they were admitted
        items += [(i.request.sort_key, i.request, i) for i in out.scheduled[:num_running]]
        items.sort(key=lambda t: t[0])
        items += [(i.request.sort_key, i.request, i) for i in out.scheduled[num_running:]]
        outputs: list[EngineCoreOutput] = []
        for _, req, item in items:
            if item is not None:  # a prefill chunk or a newly admitted request: the scheduler's own update
                token = {req.request_id: SIM_TOKEN} if item.samples else {}
                outputs += s.update(SchedulerOutput([item]), SampledTokens(token_ids=token))
                continue
            lazy.write_back(req, 1)  # its block filled or it reached its length with this step
            kv.register_computed(req)
            if req in done:
                lazy.remove(req)
                s.finish(req, "length")
                outputs.append(EngineCoreOutput(request_id=req.request_id, new_token_ids=[SIM_TOKEN],
                                                finish_reason="length"))
        s.generation_tokens_total += n
        lazy.step += 1
        if self._leave_incremental:
            self._leave_incremental = False
            self._disable_incremental()
            return outputs
        others = []
        for req in self._others:
            if req.status is not RequestStatus.RUNNING:
                continue
            if decodable(req):
                lazy.add(req, s.max_model_len)
            else:
                others.append(req)
        self._others = others
        return outputs
