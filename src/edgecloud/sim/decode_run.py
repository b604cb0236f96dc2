"""Runs of pure decode steps advanced at once: the simulator's fast path (``decode_runs=True``).

Between two events that can change an instance's schedule (a request reaching it, a request
finishing, a block it cannot get, an observer reading it), an instance whose every running request
is decoding repeats the same step: each request computes one token and samples the next. Stepping
it one event per step costs the scheduler, the cost model and the simulator O(batch) Python work
per step, which is what bounds the simulator's speed on large clusters. A ``DecodeRun`` plans the
whole run when its first step is scheduled: how many steps it can last (until the first request
reaches its length limit, or until the free KV blocks would not cover the blocks its requests
cross into) and when each step ends. Its effect on the scheduler and the KV manager is applied
only when the run ends or is cut short (``apply``), in the order the step-by-step simulation
applies it: at each step boundary, first the blocks that became full are keyed
(``register_computed``, requests in running order), then the next step takes a block for each
request that crossed into a new one (``grow``). Only requests at a block boundary are touched, so
a run of k steps over n requests costs O(n + k + n·k/block_size) instead of O(n·k).

Step durations: in a pure decode step only the attention's KV reads depend on the contexts, and
they grow by one token per request per step. ``PerfModel.step_time`` is then affine in the step
index as long as no request's attention changes between compute- and memory-bound: the run's first
step is priced exactly, each later one adds every request's slope, taken from the cost model on one
request and checked affine over the contexts the run spans (one request's time is a maximum of two
affine functions, so agreement at both ends means affine between). The times agree with the
step-by-step simulation to float rounding, not bit for bit: the fast path is opt-in and the
step-by-step one stays the default.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

from edgecloud.llm.kv_cache import KVCacheManager
from edgecloud.llm.perf_model import PerfModel, StepShape
from edgecloud.llm.request_state import Request
from edgecloud.llm.scheduler import ScheduledRequest, Scheduler, SchedulerOutput

# relative disagreement between the affine step times and the cost model that ends a run early
_AFFINE_TOLERANCE = 1e-9


@dataclass
class DecodeCredit:
    """Tokens a run produced: each of ``requests`` sampled one at each of ``times`` (step ends)."""

    requests: list[Request]
    times: list[float]


@dataclass(eq=False)
class DecodeRun:
    requests: list[Request]  # running order
    computed: list[int]  # each request's computed tokens before the run's first step
    ends: list[float]  # end time of each step
    durations: list[float]  # duration of each step
    boundaries: list[list[int]]  # boundaries[j % block_size]: requests whose block fills in step j

    @property
    def num_steps(self) -> int:
        return len(self.ends)

    @classmethod
    def plan(cls, scheduler: Scheduler, plan: SchedulerOutput, perf: PerfModel, now: float,
             first_duration: float) -> DecodeRun | None:
        """A run starting with ``plan`` (just scheduled at ``now``, lasting ``first_duration``), or
        None when the plan is not a pure decode step of every request or the run would last one step."""
        if getattr(perf, "noise", None):
            return None  # drawn step times are not affine in the step index
        running = scheduler.running
        if (scheduler.waiting or plan.preempted or plan.exhausted or len(plan.scheduled) != len(running)
                or scheduler.flex_step_budget is not None):
            return None
        kv = scheduler.kv
        if len(kv.pools) != 1 or kv.compressed_groups:
            return None
        max_model_len = scheduler.max_model_len
        steps = max_model_len
        for s, req in zip(plan.scheduled, running, strict=True):
            if s.request is not req or s.num_new_tokens != 1 or not s.samples or req.num_output_tokens < 1:
                return None
            params = req.params
            if params.stop_token_ids or not params.ignore_eos:
                return None  # only length ends a request here (scheduler._stop_condition)
            steps = min(steps, params.max_tokens - req.num_output_tokens, max_model_len - req.num_tokens)
        if steps < 2:
            return None
        bs = kv.block_size
        computed = [req.num_computed_tokens for req in running]
        boundaries: list[list[int]] = [[] for _ in range(bs)]
        for index, c in enumerate(computed):
            boundaries[(-c) % bs].append(index)
        # The run goes on while the free blocks cover those its requests cross into (no preemption).
        free = kv.num_free_blocks
        k = 1
        while k < steps:
            crossing = len(boundaries[k % bs])
            if crossing > free:
                break
            free -= crossing
            k += 1
        if k < 2:
            return None

        # One request's decode step, as a function of its context, is affine while its attention
        # stays memory- (or compute-) bound; the batch's step grows by the sum of its requests'
        # slopes. Checked from the shortest context at the run's start to the longest at its end.
        low, high = min(computed) + 1, max(computed)

        # A model that prices one-sequence steps apart (``profiles.LoneDecodePerfModel``) gives a
        # batch's slope from its batched path.
        slope_model = getattr(perf, "batched", perf) if len(computed) > 1 else perf

        def alone(context: int) -> float:
            return slope_model.step_time([StepShape(1, context, True)])

        slope = alone(low + 1) - alone(low)
        while k > 2 and abs(alone(low) + (high + k - low) * slope - alone(high + k)) > _AFFINE_TOLERANCE * alone(
                high + k):
            k = (k + 1) // 2  # a request's attention turns compute-bound within the run: shorter
        step = len(computed) * slope
        durations = [first_duration] + [first_duration + j * step for j in range(1, k)]
        ends = []
        at = now
        for d in durations:
            at += d
            ends.append(at)
        return cls(list(running), computed, ends, durations, boundaries)

    def steps_done(self, now: float) -> int:
        """Steps that ended by ``now``, short of the last (which the run's end event applies)."""
        return min(bisect_right(self.ends, now), self.num_steps - 1)

    def apply(self, scheduler: Scheduler, done: int, sim_token: int) -> tuple[SchedulerOutput, DecodeCredit]:
        """Applies ``done`` whole steps and schedules step ``done + 1``, as the step-by-step
        simulation would have by then; returns that step's plan and the tokens sampled so far."""
        kv: KVCacheManager = scheduler.kv
        bs = kv.block_size
        requests, computed = self.requests, self.computed
        for j in range(1, done + 1):
            filled = self.boundaries[j % bs]
            if not filled:
                continue
            for index in filled:  # update of step j: the block each of them filled gets its key
                req = requests[index]
                req.num_computed_tokens = computed[index] + j
                _extend(req, computed[index] + j, sim_token)
                kv.register_computed(req)
            for index in filled:  # schedule of step j + 1: a block for their next token
                kv.grow(requests[index], computed[index] + j + 1)
        for req, c in zip(requests, computed, strict=True):
            req.num_computed_tokens = c + done
            _extend(req, c + done + 1, sim_token)
        scheduler.generation_tokens_total += done * len(requests)
        plan = SchedulerOutput([ScheduledRequest(req, 1) for req in requests])
        return plan, DecodeCredit(requests, self.ends[:done])


def _extend(req: Request, num_tokens: int, token: int) -> None:
    """Appends the run's sampled tokens (all ``token``) up to ``num_tokens`` tokens."""
    missing = num_tokens - len(req.all_token_ids)
    if missing > 0:
        req.all_token_ids.extend([token] * missing)
