"""OmniProxy (OmniInfer, arXiv 2511.22481, the proxy in front of prefill and decode instances;
reimplemented from the paper and a reading of its open nginx module's scheduler) as routing
policies over the router's read-only instance views: the same objects schedule a real cluster
(``edgecloud cluster serve --policy omniproxy``) and a simulated one (``edgecloud.sim``).

- ``omni-prefill``: requests wait at the proxy, not in the instances' queues. Whenever the
  instances' state changes, the waiting requests are taken in the order of a weight that favours
  short prompts and, less, long waits: ``0.8 (longest - prompt) / longest + 0.2 waited / longest
  wait`` over the requests waiting then (OmniInfer's weights), and each goes to the instance with
  the deepest prefix-cache match among those with room (prompt tokens queued there below
  ``room_tokens``, fewer than ``max_running`` prompts); equal matches go to the instance that
  starts it soonest: the fewest tokens of work queued before it (OmniInfer predicts when each
  instance's batch ends; here the prediction is counted in tokens, as ``prefix-aware`` counts
  them). When no instance has room the request is held ("not now"), so it is bound to an instance
  only once that instance can take it (late binding) and a short prompt does not queue behind
  long ones. ``hold=0`` sends each request at once, as OmniInfer's code does when every instance
  is full (to the one with the fewest queued tokens).
- ``omni-decode``: the instance with the least token load, the sum of prompt + max_tokens over the
  requests routed there and not finished, counted from the moment they are routed (the policy's
  own books, so requests still being prefilled count; ``least-outstanding`` sees a decode only
  once its hand-over ended). OmniInfer orders the requests waiting for a decode instance longest
  first; here the decode instance is fixed when a prefill is released, one request at a time, so
  there is no queue of decodes to order.
- ``omniproxy``: P/D with ``omni-prefill`` on prefill instances and ``omni-decode`` on decode ones
  (as ``pd`` with those two, but the decode instance is picked only once the prefill is released,
  and both hear what became of their decisions).
"""

from __future__ import annotations

from collections.abc import Sequence

from edgecloud.cluster.config import Role
from edgecloud.cluster.policies import PrefillDecode, RoutingPolicy, register_policy
from edgecloud.cluster.router import InstanceView, RouteRequest, Ticket

MIN_LONGEST_WAIT_S = 0.05  # OmniInfer's floor on the longest wait, so a fresh queue is ordered by length
Loads = dict[InstanceView, tuple[int, int]]  # per instance: prompt tokens queued, prompts in flight


def prefill_weight(prompt_tokens: int, waited_s: float, longest: int, longest_wait_s: float,
                   length_weight: float) -> float:
    """OmniProxy's order of waiting prompts (higher first): short prompts, then long waits."""
    return (length_weight * (longest - prompt_tokens) / longest
            + (1.0 - length_weight) * waited_s / longest_wait_s)


def start_tokens(view: InstanceView, req: RouteRequest, queued: int) -> float:
    """Tokens of work on ``view`` before ``req``'s first token when ``queued`` prompt tokens wait
    there: those and its own uncached ones, plus a token per decoding request in every step."""
    work = queued + req.num_prompt_tokens - view.cached_tokens(req)
    return work + view.decoding * max(1.0, work / view.max_num_batched_tokens)


@register_policy("omni-prefill")
class OmniPrefill(RoutingPolicy):
    def __init__(
        self, roles: Sequence[Role] = ("mixed",), pools: Sequence[str] | None = None, room_tokens: int | None = None,
        max_running: int = 32, length_weight: float = 0.8, hold: bool = True,
    ) -> None:
        super().__init__(roles, pools)
        if room_tokens is not None and not room_tokens >= 1:
            raise ValueError(f"omni-prefill: room_tokens must be >= 1 (default: twice an instance's token budget "
                             f"per step), got {room_tokens}")
        if not (isinstance(max_running, int) and max_running >= 1):
            raise ValueError(f"omni-prefill: max_running must be an integer >= 1, got {max_running!r}")
        if not (isinstance(length_weight, int | float) and 0.0 <= length_weight <= 1.0):
            raise ValueError(f"omni-prefill: length_weight must be in [0, 1], got {length_weight!r}")
        if hold not in (0, 1):
            raise ValueError(f"omni-prefill: hold must be 1 (hold requests at the proxy) or 0, got {hold!r}")
        self.room_tokens = None if room_tokens is None else int(room_tokens)
        self.max_running = max_running
        self.length_weight = float(length_weight)
        self.hold = bool(hold)
        self._waiting: dict[RouteRequest, float] = {}  # held requests (in arrival order) -> first asked at
        self._plan: dict[RouteRequest, InstanceView] = {}  # waiting requests to release, and where
        self._expected: Loads | None = None  # the loads the plan holds for (after its releases so far)
        self.held = 0  # requests that had to wait at the proxy, since the start

    @property
    def waiting(self) -> int:
        """Requests held at the proxy."""
        return len(self._waiting)

    def has_room(self, view: InstanceView, queued: int, running: int) -> bool:
        room = self.room_tokens if self.room_tokens is not None else 2 * view.max_num_batched_tokens
        return queued < room and running < self.max_running

    def _best(self, req: RouteRequest, views: list[InstanceView], loads: Loads) -> InstanceView:
        """Deepest prefix match, then the soonest start, then the fewest prompts, then the fewest routed."""
        return min(views, key=lambda v: (-v.cached_blocks(req), start_tokens(v, req, loads[v][0]), loads[v][1],
                                         v.routed))

    def choose(self, req: RouteRequest, candidates: list[InstanceView], now: float) -> InstanceView | None:
        loads = {v: (v.pending_prefill_tokens, v.outstanding) for v in candidates}
        if not self.hold:
            open_views = [v for v in candidates if self.has_room(v, *loads[v])]
            if open_views:
                return self._best(req, open_views, loads)
            return min(candidates, key=lambda v: (loads[v][0], loads[v][1], v.routed))
        fresh = req not in self._waiting
        if fresh:
            self._waiting[req] = now
            self._expected = None
        if loads != self._expected:
            self._replan(candidates, loads, now)
        target = self._plan.pop(req, None)
        if target is None:
            self.held += fresh
            return None
        del self._waiting[req]
        assert self._expected is not None
        queued, running = self._expected[target]
        self._expected[target] = (queued + req.num_prompt_tokens - target.cached_tokens(req), running + 1)
        return target

    def _replan(self, candidates: list[InstanceView], loads: Loads, now: float) -> None:
        """Which waiting requests go now, and where: in weight order, each to its best instance
        with room, until no instance has room."""
        self._expected = dict(loads)
        self._plan = {}
        if not any(self.has_room(v, *loads[v]) for v in candidates):
            return
        waiting = list(self._waiting.items())
        longest = max(1, max(r.num_prompt_tokens for r, _ in waiting))
        longest_wait = max(MIN_LONGEST_WAIT_S, max(now - since for _, since in waiting))
        order = sorted(waiting, key=lambda item: -prefill_weight(item[0].num_prompt_tokens, now - item[1], longest,
                                                                 longest_wait, self.length_weight))
        planned = dict(loads)
        for r, _ in order:
            open_views = [v for v in candidates if self.has_room(v, *planned[v])]
            if not open_views:
                break
            target = self._best(r, open_views, planned)
            self._plan[r] = target
            queued, running = planned[target]
            planned[target] = (queued + r.num_prompt_tokens - target.cached_tokens(r), running + 1)

    def withdrawn(self, req: RouteRequest) -> None:
        if self._waiting.pop(req, None) is not None:
            self._plan.pop(req, None)
            self._expected = None  # its place in the plan goes to another


@register_policy("omni-decode")
class OmniDecode(RoutingPolicy):
    def __init__(
        self, roles: Sequence[Role] = ("mixed",), pools: Sequence[str] | None = None, max_running: int | None = None,
    ) -> None:
        super().__init__(roles, pools)
        if max_running is not None and not (isinstance(max_running, int) and max_running >= 1):
            raise ValueError(f"omni-decode: max_running must be an integer >= 1, got {max_running!r}")
        self.max_running = max_running
        self._books: dict[str, tuple[InstanceView, int]] = {}  # request id -> where it went, its tokens
        self._load: dict[InstanceView, list[int]] = {}  # per instance: token load, requests

    def token_load(self, view: InstanceView) -> int:
        """Prompt + max_tokens of the requests routed to ``view`` and not finished."""
        return self._load.get(view, [0, 0])[0]

    def choose(self, req: RouteRequest, candidates: list[InstanceView], now: float) -> InstanceView:
        self._forget(req.request_id)  # routed again: its instance failed before answering
        open_views = [v for v in candidates
                      if self.max_running is None or self._load.get(v, [0, 0])[1] < self.max_running]
        target = min(open_views or candidates, key=lambda v: (self.token_load(v), v.outstanding, v.routed))
        tokens = req.num_prompt_tokens + req.max_tokens
        self._books[req.request_id] = (target, tokens)
        load = self._load.setdefault(target, [0, 0])
        load[0] += tokens
        load[1] += 1
        return target

    def _forget(self, request_id: str) -> None:
        booked = self._books.pop(request_id, None)
        if booked is not None:
            load = self._load[booked[0]]
            load[0] -= booked[1]
            load[1] -= 1

    def ended(self, ticket: Ticket) -> None:
        booked = self._books.get(ticket.request.request_id)
        if ticket.stage != "prefill" and booked is not None and booked[0] is ticket.view:
            self._forget(ticket.request.request_id)

    def withdrawn(self, req: RouteRequest) -> None:
        self._forget(req.request_id)


@register_policy("omniproxy")
class OmniProxy(PrefillDecode):
    """P/D: ``omni-prefill`` releases a prompt to a prefill instance (its options: ``room_tokens``,
    ``max_running``, ``length_weight``, ``hold``), then ``omni-decode`` picks its decode instance
    (``decode_max_running``). ``pd`` with ``prefill=`` / ``decode=`` mixes them with other policies."""

    def __init__(
        self, pools: Sequence[str] | None = None, room_tokens: int | None = None, max_running: int = 32,
        length_weight: float = 0.8, hold: bool = True, decode_max_running: int | None = None,
    ) -> None:
        RoutingPolicy.__init__(self, ("prefill", "decode"), pools)
        self.prefill_policy = OmniPrefill(("prefill",), pools, room_tokens, max_running, length_weight, hold)
        self.decode_policy = OmniDecode(("decode",), pools, decode_max_running)
