"""Continuous batching: which requests run in the next step and how many tokens each
(``schedule``), and what a step's sampled tokens do to them (``update``).

Every step mixes decodes and prefill chunks under a token budget (``max_num_batched_tokens``) and
a cap on running requests (``max_num_seqs``). Order: ``service_tier`` (``default`` before
``flex``), then ``priority`` (smaller first), then arrival. Running requests go before waiting
ones; long prompts are prefilled in chunks. When KV blocks run out, the least urgent running
request is preempted: its blocks go back to the cache and it waits again, to resume from what is
still cached.

Service tiers (docs/engine-core.md): a waiting ``default`` request that finds no seat or no KV
preempts running ``flex`` requests in the same step, and a step that prefills a ``default``
request runs no ``flex`` work, so an online prompt is prefilled as on an idle engine.

No clock and no tensors here: the engine core passes ``now``, and the executor's sampled tokens
come in through ``update``. The simulator drives this same class with a modelled executor.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from edgecloud.llm.kv_cache import KVCacheManager
from edgecloud.llm.outputs import EngineCoreOutput, TokenLogprob
from edgecloud.llm.request_state import Request, RequestStatus


@dataclass
class ScheduledRequest:
    request: Request
    num_new_tokens: int

    @property
    def samples(self) -> bool:
        """Whether this step reaches the request's last token, so a next token is sampled."""
        return self.request.num_computed_tokens + self.num_new_tokens == self.request.num_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    exhausted: list[Request] = field(default_factory=list)  # cannot fit even alone: they finish

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    def summary(self) -> list[tuple[str, int]]:
        """``(request id, tokens)`` per scheduled request: what a recorded run is compared by."""
        return [(s.request.request_id, s.num_new_tokens) for s in self.scheduled]


@dataclass
class SampledTokens:
    """The executor's result for one step: the next token (and its logprob, when asked) of each
    scheduled request that reached its last token."""

    token_ids: dict[str, int] = field(default_factory=dict)
    logprobs: dict[str, TokenLogprob] = field(default_factory=dict)


class Scheduler:
    def __init__(
        self,
        kv: KVCacheManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        eos_token_ids: Iterable[int] = (),
        max_loras: int | None = None,
        flex_max_batched_tokens: int | None = None,
    ) -> None:
        self.kv = kv
        # LoRA: the most distinct adapters among running requests (each needs a device slot in
        # every step it runs); None: no limit.
        self.max_loras = max_loras
        # LoRA, optional: whether a waiting request's adapter is in host memory, ready for a slot;
        # asking starts its read if not (``LoRAManager.ready``). Until it is, the request waits and
        # requests behind it go ahead, as with ``max_loras``.
        self.adapter_ready: Callable[[str], bool] | None = None
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        # flex work in one step: a step with flex prefill must not cost much more than a decode step,
        # or an online request that arrives during it waits for the whole prefill (issue #17 bench).
        self.flex_max_batched_tokens = flex_max_batched_tokens or max_num_seqs
        # Optional, default off: a further per-step cap on flex tokens, asked once the step's
        # default-tier work is planned (OOCO's strict pool sizes it to the slack of its TPOT budget
        # with the roofline model, issue #19). It sees this scheduler and the plan so far.
        self.flex_step_budget: Callable[[Scheduler, SchedulerOutput], int] | None = None
        self.max_model_len = max_model_len
        self.eos_token_ids = frozenset(eos_token_ids)
        self.requests: dict[str, Request] = {}
        self.waiting: list[Request] = []  # sorted by sort_key
        self.running: list[Request] = []  # sorted by sort_key
        self.num_preemptions = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0

    # -- requests -----------------------------------------------------------------------------

    def add(self, req: Request) -> None:
        self.requests[req.request_id] = req
        self._wait(req)

    def _wait(self, req: Request) -> None:
        req.status = RequestStatus.WAITING
        bisect.insort(self.waiting, req, key=lambda r: r.sort_key)

    def finish(self, req: Request, reason: str, stop_reason: int | None = None) -> None:
        """Takes a request out of the queues and frees its blocks (finish, abort, failure). With
        ``kv_transfer.export`` its full blocks stay pinned for the exporter."""
        if req.status is RequestStatus.RUNNING:
            self.running.remove(req)
        elif req.status is RequestStatus.WAITING:
            self.waiting.remove(req)
        if req.kv_transfer is not None and req.kv_transfer.export and reason != "abort":
            self.kv.register_computed(req)
            req.block_keys = self.kv.pin(req.block_keys)
        self.kv.free(req)
        req.status = RequestStatus.FINISHED
        req.finish_reason = reason
        req.stop_reason = stop_reason
        self.requests.pop(req.request_id, None)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # -- schedule -----------------------------------------------------------------------------

    def schedule(self, now: float) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_tier("default", out, self.max_num_batched_tokens)
        if out.exhausted:
            return out
        online_prefill = any(
            s.request.num_computed_tokens < s.request.num_prompt_tokens for s in out.scheduled
        )
        if not online_prefill:
            flex_budget = min(budget, self.flex_max_batched_tokens)
            if self.flex_step_budget is not None:
                flex_budget = min(flex_budget, self.flex_step_budget(self, out))
            if flex_budget > 0:
                self._schedule_tier("flex", out, flex_budget)
        self.note_scheduled(out, now)
        return out

    def note_scheduled(self, out: SchedulerOutput, now: float) -> None:
        """Books what ``out`` schedules: first-scheduled times and the prompt tokens it computes."""
        for s in out.scheduled:
            req = s.request
            if req.first_scheduled_time is None:
                req.first_scheduled_time = now
            if req.num_computed_tokens < req.num_prompt_tokens:
                self.prompt_tokens_total += min(s.num_new_tokens, req.num_prompt_tokens - req.num_computed_tokens)

    def _schedule_tier(self, tier: str, out: SchedulerOutput, budget: int) -> int:
        """Schedules the running, then the waiting requests of one tier; returns the budget left."""
        kv = self.kv
        kv_short = False
        # Decodes of this tier further down the list keep their token: a prefill chunk takes what
        # is left, so a long prompt never stalls the decodes behind it for a step.
        decodes_after = sum(
            1 for r in self.running if r.service_tier == tier and r.num_tokens - r.num_computed_tokens == 1
        )
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            if req.service_tier != tier:
                if tier == "default":
                    break  # running is sorted: the rest are flex
                i += 1
                continue
            remaining = req.num_tokens - req.num_computed_tokens
            if remaining == 1:
                decodes_after -= 1
                num_new = 1
            else:
                num_new = min(remaining, budget - decodes_after)
                if num_new <= 0:
                    i += 1
                    continue
            target = req.num_computed_tokens + num_new
            while not kv.can_grow(req, target):
                kv_short = True
                victim = self.running[-1]  # the least urgent; never one scheduled before req
                if victim is req and len(self.running) == 1 and not out.scheduled:
                    # Alone and still no room: the pool cannot hold this request any longer.
                    out.exhausted.append(req)
                    return budget
                self._preempt(victim, out)
                if victim is req:
                    break
            else:
                kv.grow(req, target)
                out.scheduled.append(ScheduledRequest(req, num_new))
                budget -= num_new
                i += 1
                continue
            break
        if kv_short:
            return budget  # no room to admit anyone
        return self._admit_waiting(tier, out, budget)

    def _admit_waiting(self, tier: str, out: SchedulerOutput, budget: int) -> int:
        """Admits waiting requests of one tier while the budget, the seats and the KV allow (the
        second half of ``_schedule_tier``; the simulator's incremental instances call it alone)."""
        kv = self.kv
        j = 0
        while j < len(self.waiting) and budget > 0:
            req = self.waiting[j]
            if req.service_tier != tier:
                if tier == "default":
                    break  # waiting is sorted: the rest are flex
                j += 1
                continue
            if self._waits_for_sibling(req) or self._no_adapter_slot(req) or self._adapter_loading(req):
                j += 1
                continue
            if len(self.running) >= self.max_num_seqs and not (tier == "default" and self._preempt_flex(out)):
                break
            admitted = kv.admit(req, budget)
            while admitted is None and tier == "default" and self._preempt_flex(out):
                admitted = kv.admit(req, budget)
            if admitted is None:
                break
            self.waiting.pop(j)
            req.status = RequestStatus.RUNNING
            bisect.insort(self.running, req, key=lambda r: r.sort_key)
            out.scheduled.append(ScheduledRequest(req, admitted))
            budget -= admitted
        return budget

    def _waits_for_sibling(self, req: Request) -> bool:
        """One of ``n`` samples of a prompt waits until the first has prefilled it (then it finds
        the prompt's full blocks cached instead of computing them again)."""
        if req.wait_for is None:
            return False
        first = self.requests.get(req.wait_for)
        if first is None or first.num_computed_tokens >= first.num_prompt_tokens:
            req.wait_for = None
            return False
        return True

    def _no_adapter_slot(self, req: Request) -> bool:
        """A request whose adapter no running request uses waits while ``max_loras`` distinct
        adapters run; requests behind it whose adapters run already go ahead."""
        if self.max_loras is None or req.adapter_id is None:
            return False
        running = {r.adapter_id for r in self.running if r.adapter_id is not None}
        return req.adapter_id not in running and len(running) >= self.max_loras

    def _adapter_loading(self, req: Request) -> bool:
        return req.adapter_id is not None and self.adapter_ready is not None and not self.adapter_ready(req.adapter_id)

    def _preempt_flex(self, out: SchedulerOutput) -> bool:
        """Preempts the least urgent running ``flex`` request not scheduled in this step."""
        scheduled = {id(s.request) for s in out.scheduled}
        for victim in reversed(self.running):
            if victim.service_tier != "flex":
                return False
            if id(victim) not in scheduled:
                self._preempt(victim, out)
                return True
        return False

    def _preempt(self, req: Request, out: SchedulerOutput) -> None:
        self.running.remove(req)
        self.kv.preempt(req)
        req.num_preemptions += 1
        self.num_preemptions += 1
        out.preempted.append(req)
        self._wait(req)

    # -- update -------------------------------------------------------------------------------

    def abandon(self, plan: SchedulerOutput) -> list[EngineCoreOutput]:
        """Drops a step stopped between layers (docs/engine-core.md): no request advances, so the next
        steps compute its tokens again into the blocks they already hold; prompt tokens counted when it
        was scheduled are taken back. The engine core and the simulator both end such a step here."""
        for s in plan.scheduled:
            req = s.request
            if req.num_computed_tokens < req.num_prompt_tokens:  # counted at schedule time: once only
                self.prompt_tokens_total -= min(s.num_new_tokens, req.num_prompt_tokens - req.num_computed_tokens)
        return self.update(SchedulerOutput(exhausted=plan.exhausted), SampledTokens())

    def update(self, plan: SchedulerOutput, sampled: SampledTokens) -> list[EngineCoreOutput]:
        """Applies one executed step: advances computed tokens, keys the blocks that became full,
        appends sampled tokens and finishes requests that reached a stop condition."""
        outputs: list[EngineCoreOutput] = []
        for req in plan.exhausted:
            self.finish(req, "length")
            outputs.append(EngineCoreOutput(request_id=req.request_id, finish_reason="length"))
        for s in plan.scheduled:
            req = s.request
            req.num_computed_tokens += s.num_new_tokens
            self.kv.register_computed(req)
            token = sampled.token_ids.get(req.request_id)
            if token is None:
                continue
            out = EngineCoreOutput(request_id=req.request_id, new_token_ids=[token])
            if req.num_output_tokens == 0:
                out.num_cached_tokens = req.num_cached_tokens or 0
                out.first_scheduled_time = req.first_scheduled_time
            logprob = sampled.logprobs.get(req.request_id)
            if logprob is not None:
                out.new_logprobs = [logprob]
            req.all_token_ids.append(token)
            self.generation_tokens_total += 1
            reason, stop_token = self._stop_condition(req, token)
            if reason is not None:
                self.finish(req, reason, stop_token)
                out.finish_reason, out.stop_reason = reason, stop_token
                if req.kv_transfer is not None and req.kv_transfer.export:
                    out.kv_block_keys = list(req.block_keys)
            outputs.append(out)
        return outputs

    def _stop_condition(self, req: Request, token: int) -> tuple[str | None, int | None]:
        p = req.params
        if p.stop_token_ids and token in p.stop_token_ids:
            return "stop", token
        if not p.ignore_eos and token in self.eos_token_ids:
            return "stop", None
        if req.num_output_tokens >= p.max_tokens or req.num_tokens >= self.max_model_len:
            return "length", None
        return None, None

    def check_invariants(self) -> None:
        """Block accounting and queue membership agree (tests call it after every operation)."""
        live = self.running + self.waiting
        assert {r.request_id for r in live} == set(self.requests)
        assert all(r.status is RequestStatus.RUNNING for r in self.running)
        assert all(r.status is RequestStatus.WAITING and not any(r.block_tables) for r in self.waiting)
        assert len(self.running) <= self.max_num_seqs
        if self.max_loras is not None:
            assert len({r.adapter_id for r in self.running if r.adapter_id is not None}) <= self.max_loras
        self.kv.check_invariants(self.running)
