"""Online/offline co-location policies (OOCO, arXiv 2511.21862; reimplemented from the paper and a
reading of xLLM's scheduler), and the two baselines it is measured against. Requests carry
OpenAI's ``service_tier``: ``default`` is online (latency SLOs), ``flex`` offline (throughput).
Instances belong to a ``strict`` or a ``relaxed`` pool (``InstanceSpec.pool``).

- ``ooco``: the relaxed pool prefills online prompts and runs offline work; the strict pool
  decodes online requests and, where the roofline model says a step has slack, offline ones.
  Online: prefill on the relaxed instance with the fewest prompt tokens waiting, KV handed to the
  strict instance with the fewest requests; the engines' tier rules do the rest (an online
  prefill step runs no offline work; an online request short of a seat or of KV preempts offline
  ones). Offline: pulled by a strict instance whose KV use is under ``kv_limit`` and whose
  predicted decode step with one more sequence stays under ``slack`` x the TPOT SLO, if the
  request fits its preferred length; otherwise admitted to a relaxed instance while its offline
  requests are fewer than the linear saturation batch; otherwise held until something changes.
  With ``strict_prefill`` (the default) a strict instance also prefills the offline work it pulls,
  in chunks that its engine sizes per step to what is left of the TPOT budget after the online
  decodes (``FlexStepBudget``); without it (``ooco-pd``, the paper's letter) the prompt is
  prefilled on a relaxed instance and its KV handed over, so the strict pool's compute between
  decode steps stays idle.
- ``separate``: online on the strict pool only, offline on the relaxed pool only.
- ``priority``: every instance takes both, with the engine's tier priority and preemption
  (vLLM-style priority scheduling); least-outstanding routing.
- ``pd-priority``: co-location applied directly to a P/D-disaggregated cluster (the setting the
  paper starts from): every prompt, online or offline, prefilled on the relaxed (prefill) pool,
  every request decoded on the strict (decode) pool; the engine's tiers order and preempt.

The same objects route the real cluster (``edgecloud cluster serve --policy ooco``) and the
simulator (``edgecloud.sim``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from edgecloud.cluster.config import Role
from edgecloud.cluster.ooco.roofline import Roofline, perf_model_from_files
from edgecloud.cluster.policies import RoutingPolicy, register_policy
from edgecloud.cluster.router import InstanceView, Route, RouteRequest
from edgecloud.llm.perf_model import PerfModel

STRICT = "strict"
RELAXED = "relaxed"


def is_offline(req: RouteRequest) -> bool:
    return req.service_tier == "flex"


class PoolPolicy(RoutingPolicy):
    """A policy over a strict and a relaxed pool of instances of any role."""

    def __init__(self, strict: str = STRICT, relaxed: str = RELAXED) -> None:
        super().__init__(("mixed", "prefill", "decode"), (strict, relaxed))
        self.strict = strict
        self.relaxed = relaxed

    @property
    def stages(self) -> tuple[tuple[Role, ...], ...]:
        return (self.roles,)

    def check(self, instances: Sequence[InstanceView]) -> None:
        for pool in (self.strict, self.relaxed):
            if not any(v.pool == pool for v in instances):
                raise ValueError(
                    f"routing policy {self.name!r} needs an instance in pool {pool!r}; the cluster has "
                    f"{', '.join(f'{v.name} (pool {v.pool})' for v in instances)}"
                )

    def pool(self, instances: Sequence[InstanceView], name: str) -> list[InstanceView]:
        return [v for v in instances if v.healthy and v.pool == name]

    def choose(self, req: RouteRequest, candidates: list[InstanceView], now: float) -> InstanceView | None:
        raise NotImplementedError(f"{self.name} routes by pool (route)")


def _least_loaded(views: list[InstanceView], req: RouteRequest) -> InstanceView:
    return min(views, key=lambda v: (v.outstanding_in(req.service_tier), v.outstanding, v.routed))


def queued_ahead(view: InstanceView, req: RouteRequest) -> int:
    """Prompt tokens ``req``'s prefill would wait behind on ``view``: an engine runs ``default``
    work before ``flex`` work, so an online prompt waits only for the online prompts there (a
    relaxed instance's offline queue, hundreds of thousands of tokens, is not ahead of it:
    counting it sent every online prompt for seconds to the one instance whose offline queue
    happened to be shortest)."""
    return view.pending_prefill_tokens if is_offline(req) else view.pending_prefill_tokens_in("default")


def prefill_instance(views: list[InstanceView], req: RouteRequest) -> InstanceView:
    """Where ``req``'s prompt waits least: the fewest prompt tokens ahead of it (``queued_ahead``)."""
    return min(views, key=lambda v: (queued_ahead(v, req), v.outstanding, v.routed))


@register_policy("separate")
class Separate(PoolPolicy):
    """Online requests on the strict pool, offline ones on the relaxed pool, never mixed."""

    def route(self, req: RouteRequest, instances: Sequence[InstanceView], now: float) -> Route | None:
        views = self.pool(instances, self.relaxed if is_offline(req) else self.strict)
        return Route(_least_loaded(views, req)) if views else None


@register_policy("priority")
class Priority(PoolPolicy):
    """Every instance takes online and offline requests; the engine's tiers order and preempt."""

    def route(self, req: RouteRequest, instances: Sequence[InstanceView], now: float) -> Route | None:
        views = [v for v in instances if v.healthy and v.pool in (self.strict, self.relaxed)]
        return Route(_least_loaded(views, req)) if views else None


@register_policy("pd-priority")
class PDPriority(PoolPolicy):
    """Both tiers P/D-disaggregated: prefill on the relaxed pool, decode on the strict pool."""

    def route(self, req: RouteRequest, instances: Sequence[InstanceView], now: float) -> Route | None:
        relaxed = self.pool(instances, self.relaxed)
        strict = self.pool(instances, self.strict)
        if not relaxed or not strict:
            views = strict or relaxed
            return Route(_least_loaded(views, req)) if views else None
        return Route(_least_loaded(strict, req), prefill=prefill_instance(relaxed, req))


@register_policy("ooco")
class OOCO(PoolPolicy):
    """The OOCO policy (module docstring). ``perf`` prices one instance's steps (every instance
    runs the same model on the same hardware); a real cluster's router builds it from
    ``hardware`` (a profile from ``edgecloud sim calibrate``) and ``model`` (the model's
    config.json or directory). The TPOT SLO (milliseconds) sets the strict pool's step budget.
    Online prompts are prefilled first on the relaxed pool by the engine's tier rules, behind at
    most the step in flight. With ``ttft_slo_ms`` set, a burst **overflows**: when more online
    prompt tokens would wait on the best relaxed instance than the roofline prefills in
    ``overflow_share`` of the TTFT SLO, an online request goes whole (prefill and decode, no
    hand-over) to the strict instance with the fewest online prompt tokens waiting, if fewer wait
    there. Half the cluster prefilling a burst would otherwise take twice as long as all of it
    (``separate`` and ``priority`` prefill online prompts on every online instance); the strict
    instance's chunked steps keep its decodes' TPOT."""

    default_strict_prefill = True

    def __init__(
        self,
        perf: PerfModel | None = None,
        hardware: str | None = None,
        model: str | None = None,
        tpot_slo_ms: float = 100.0,
        slack: float = 0.9,
        kv_limit: float = 0.9,
        max_offline_batch: int | None = None,
        strict_prefill: bool | None = None,
        strict_queue_tokens: int = 8192,
        ttft_slo_ms: float | None = None,
        overflow_share: float = 0.5,
        strict: str = STRICT,
        relaxed: str = RELAXED,
    ) -> None:
        super().__init__(strict, relaxed)
        if perf is None:
            if hardware is None or model is None:
                raise ValueError("ooco needs perf, or hardware (a calibrated profile) and model (its config.json)")
            perf = perf_model_from_files(hardware, model)
        for name, value in (("slack", slack), ("kv_limit", kv_limit), ("overflow_share", overflow_share)):
            if not 0 < value <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {value}")
        if max_offline_batch is not None and max_offline_batch < 1:
            raise ValueError(f"max_offline_batch must be >= 1, got {max_offline_batch}")
        if not tpot_slo_ms > 0:
            raise ValueError(f"tpot_slo_ms must be > 0, got {tpot_slo_ms}")
        if strict_queue_tokens < 1:
            raise ValueError(f"strict_queue_tokens must be >= 1, got {strict_queue_tokens}")
        if ttft_slo_ms is not None and not ttft_slo_ms > 0:
            raise ValueError(f"ttft_slo_ms must be > 0, got {ttft_slo_ms}")
        self.strict_prefill = self.default_strict_prefill if strict_prefill is None else strict_prefill
        self.strict_queue_tokens = strict_queue_tokens
        self.tpot_slo_s = tpot_slo_ms / 1000
        self.roofline = Roofline(perf)
        self.slack = slack
        self.kv_limit = kv_limit
        self.offline_batch = max_offline_batch or self.roofline.linear_saturation_bs
        # Online prompt tokens a relaxed instance may have waiting before a burst overflows to the
        # strict pool (None: never).
        self.overflow_tokens = (None if ttft_slo_ms is None else
                                self.roofline.prefill_tokens_within(overflow_share * ttft_slo_ms / 1000))
        self.overflowed = 0  # online requests served whole on the strict pool
        # Requests routed to a strict instance whose decode stage has not begun there (their
        # prefill or KV hand-over is under way): (time routed, prompt tokens), oldest first, and
        # how many stages had begun there when they were last matched. They count as its load
        # from the moment they are routed; one that never arrives (aborted) expires.
        self._transit: dict[str, deque[tuple[float, int]]] = {}
        self._transit_tokens: dict[str, int] = {}
        self._begun: dict[str, int] = {}
        self.transit_timeout_s = 60.0
        self.pulled = 0  # offline requests placed on the strict pool
        self.admitted = 0  # offline requests placed on the relaxed pool

    def in_transit(self, view: InstanceView, now: float) -> tuple[int, int]:
        """Requests (and their prompt tokens) routed to ``view`` whose decode has not begun."""
        queue = self._transit.setdefault(view.name, deque())
        tokens = self._transit_tokens.get(view.name, 0)
        begun = view.routed - self._begun.get(view.name, view.routed)
        self._begun[view.name] = view.routed
        while queue and (begun > 0 or now - queue[0][0] > self.transit_timeout_s):
            tokens -= queue.popleft()[1]
            begun -= 1
        self._transit_tokens[view.name] = tokens
        return len(queue), tokens

    def _begin_here(self, view: InstanceView, now: float) -> None:
        """A request routed whole to strict ``view``: its stage begins there at once, not a
        hand-over the transit queue waits for."""
        self.in_transit(view, now)
        self._begun[view.name] += 1

    def _send(self, view: InstanceView, req: RouteRequest, now: float) -> None:
        self.in_transit(view, now)
        self._transit[view.name].append((now, req.num_prompt_tokens))
        self._transit_tokens[view.name] += req.num_prompt_tokens

    def strict_load(self, view: InstanceView, block_size: int, now: float) -> tuple[int, int, int]:
        """A strict instance's (sequences, context tokens, free KV tokens): what it holds (its KV
        use stands for the contexts) plus what is on its way to it."""
        stats = view.stats()
        count, tokens = self.in_transit(view, now)
        # Prompts routed here and not yet prefilled hold no KV yet: counted at their full length.
        used = ((stats.num_total_blocks - stats.num_free_blocks) * block_size + tokens
                + view.pending_prefill_tokens)
        free = stats.num_total_blocks * block_size - used
        return view.outstanding + count, used, free

    def route(self, req: RouteRequest, instances: Sequence[InstanceView], now: float) -> Route | None:
        relaxed = self.pool(instances, self.relaxed)
        strict = self.pool(instances, self.strict)
        if not relaxed and not strict:
            return None
        if not is_offline(req):
            if not strict or not relaxed:  # a pool is down: serve the request where it can be
                return Route(prefill_instance(strict or relaxed, req))
            prefill = prefill_instance(relaxed, req)
            if self.overflow_tokens is not None:
                ahead = queued_ahead(prefill, req) + req.num_prompt_tokens
                here = prefill_instance(strict, req)
                if ahead > self.overflow_tokens and queued_ahead(here, req) + req.num_prompt_tokens < ahead:
                    self._begin_here(here, now)
                    self.overflowed += 1
                    return Route(here)
            target = min(strict, key=lambda v: (v.outstanding_in("default") + self.in_transit(v, now)[0],
                                                v.outstanding, v.routed))
            self._send(target, req, now)
            return Route(target, prefill=prefill)
        need = req.num_prompt_tokens + req.max_tokens
        limit = self.slack * self.tpot_slo_s
        if relaxed:
            for view in sorted(strict, key=lambda v: (v.outstanding, v.routed)):
                if view.stats().kv_usage >= self.kv_limit:
                    continue
                seqs, context, free = self.strict_load(view, req.block_size, now)
                # need <= the preferred length (the longest that fits; the model is monotone in it)
                if need > free or not self.roofline.fits(seqs, context, need, limit):
                    continue
                if self.strict_prefill:
                    if view.pending_prefill_tokens >= self.strict_queue_tokens:
                        continue
                    self._begin_here(view, now)
                    self.pulled += 1
                    return Route(view)
                self.pulled += 1
                self._send(view, req, now)
                return Route(view, prefill=prefill_instance(relaxed, req))
        room = [v for v in relaxed if v.outstanding_in("flex") < self.offline_batch]
        if not room:
            return None
        self.admitted += 1
        return Route(min(room, key=lambda v: (v.outstanding_in("flex"), v.outstanding, v.routed)))


@register_policy("ooco-pd")
class OOCOHandover(OOCO):
    """``ooco`` as the paper has it: offline work pulled by the strict pool is prefilled on the
    relaxed pool and its KV handed over (``strict_prefill`` off by default)."""

    default_strict_prefill = False
