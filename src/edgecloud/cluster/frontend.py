"""The router's engine: the cluster as the OpenAI server sees it.

``ClusterEngine`` has ``AsyncEngine``'s interface (``generate``, ``encode``, ``stats``,
``healthy``...), so the server's API, streaming, errors and metrics (``edgecloud.server``) serve a
cluster unchanged. It tokenizes once, asks the ``Router`` (the routing policy over read-only
instance views) where each request goes, and streams the chosen instance's outputs through. With
a P/D route the prompt is first prefilled on the prefill instance (one token, its KV exported),
the blocks the decode instance lacks are handed over by a ``KVConnector``, and the decode
instance then generates the whole answer, finding the prompt in its prefix cache: its output is
the one a single instance gives (greedy, or seeded sampling alike).

Faults: an instance that dies is unhealthy at once (its client says so) and gets no new requests;
its in-flight requests end with an error; a request whose instance died before it produced
anything is routed again. With no instance up, requests are refused (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from edgecloud.cluster.config import ClusterConfigError
from edgecloud.cluster.connectors import KVConnector, TransferResult, ZMQConnector
from edgecloud.cluster.instance import Instance
from edgecloud.cluster.policies import RoutingPolicy
from edgecloud.cluster.router import InstanceView, NoInstanceAvailable, Route, Router, RouteRequest, Stage
from edgecloud.llm.output_processor import EngineDeadError, EngineError, Prompt
from edgecloud.llm.outputs import EngineStats, OutputKind, RequestOutput
from edgecloud.llm.request import KVTransferParams
from edgecloud.llm.sampling_params import SamplingParams
from edgecloud.llm.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class Handover:
    """One P/D hand-over, timed on the router: the prefill stage, the KV transfer (from the
    prefill's end), and the decode instance's first token (from the transfer's end)."""

    request_id: str
    prefill_instance: str
    decode_instance: str
    prompt_tokens: int
    prefill_s: float
    transfer: TransferResult
    transferred_at: float  # time.monotonic() when the decode instance got the request
    first_token_s: float | None = None


class ClusterEngine:
    def __init__(
        self,
        instances: list[Instance],
        policy: RoutingPolicy,
        connector: KVConnector | None = None,
        on_handover: Callable[[Handover], None] | None = None,
    ) -> None:
        if not instances:
            raise ClusterConfigError("a cluster needs at least one instance")
        self.instances = instances
        self.policy = policy
        self.connector = connector or ZMQConnector()
        first = instances[0].engine
        self.tokenizer: Tokenizer = first.tokenizer
        self.source = first.source
        self.router: Router | None = None
        self.on_fatal: Callable[[str], None] | None = None
        self.on_handover = on_handover
        self.handovers: deque[Handover] = deque(maxlen=10000)
        self.stopping = False
        self._changed: asyncio.Event | None = None
        self._started = False

    # -- what the server reads ----------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.instances[0].engine.model_name

    @property
    def max_model_len(self) -> int:
        return min(i.info.max_model_len for i in self.instances)

    @property
    def generation_defaults(self) -> dict[str, float]:
        return self.instances[0].info.generation_defaults

    @property
    def healthy(self) -> bool:
        if self.stopping or self.router is None:
            return False
        return all(any(v.healthy and v.role in roles for v in self.router.views) for roles in self.policy.stages)

    @property
    def dead_reason(self) -> str | None:
        if self.healthy:
            return None
        if self.router is None:
            return "the cluster has not started"
        down = [f"{i.name}: {i.engine.dead_reason or 'not running'}" for i in self.instances if not i.healthy]
        return "no instance can serve: " + "; ".join(down)

    def stats(self) -> EngineStats:
        """The instances' counters added up (KV usage over all their blocks)."""
        parts = [i.stats() for i in self.instances]
        total = sum(s.num_total_blocks for s in parts)
        free = sum(s.num_free_blocks for s in parts)
        return EngineStats(
            num_waiting=sum(s.num_waiting for s in parts),
            num_running=sum(s.num_running for s in parts),
            num_free_blocks=free,
            num_total_blocks=total,
            kv_usage=1.0 - free / total if total else 0.0,
            prefix_cache_queries=sum(s.prefix_cache_queries for s in parts),
            prefix_cache_hits=sum(s.prefix_cache_hits for s in parts),
            prompt_tokens_total=sum(s.prompt_tokens_total for s in parts),
            generation_tokens_total=sum(s.generation_tokens_total for s in parts),
            num_preemptions=sum(s.num_preemptions for s in parts),
            num_steps=sum(s.num_steps for s in parts),
        )

    def describe(self) -> dict[str, Any]:
        """The cluster as ``GET /cluster/instances`` shows it."""
        views = {v.name: v for v in self.router.views} if self.router else {}
        rows = []
        for instance in self.instances:
            row = instance.describe()
            view = views.get(instance.name)
            if view is not None:
                row.update(outstanding=view.outstanding, pending_prefill_tokens=view.pending_prefill_tokens,
                           decoding=view.decoding, routed=view.routed)
            rows.append(row)
        return {"policy": self.policy.name, "connector": self.connector.name, "instances": rows}

    # -- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Starts every instance at once; if any does not come up, stops the others and raises
        ``InstanceStartError`` (for the first that failed, naming the others too)."""
        if self._started:
            return
        self._changed = asyncio.Event()
        results = await asyncio.gather(*(i.start() for i in self.instances), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await asyncio.gather(*(i.shutdown() for i in self.instances), return_exceptions=True)
            if len(failures) > 1:
                log.error("other instances failed too: %s", "; ".join(map(str, failures[1:])))
            raise failures[0]
        fingerprints = {i.info.fingerprint for i in self.instances}
        if len(fingerprints) > 1:
            await self.shutdown()
            raise ClusterConfigError("the instances loaded different models (their KV blocks would not be shared)")
        info = self.instances[0].info
        try:
            self.router = Router(self.instances, self.policy, info.fingerprint, info.block_size)
        except ValueError as error:
            await self.shutdown()
            raise ClusterConfigError(str(error)) from None
        for instance in self.instances:
            instance.engine.on_fatal = self._instance_fatal
        self._started = True

    def _instance_fatal(self, message: str) -> None:
        log.critical("%s", message)
        if not self.healthy and self.on_fatal is not None:
            self.on_fatal(f"no instance left: {message}")

    async def shutdown(self) -> None:
        self.stopping = True
        await asyncio.gather(*(i.shutdown() for i in self.instances), return_exceptions=True)

    # -- requests ------------------------------------------------------------------------------

    async def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return await self.instances[0].engine.encode(text, add_special_tokens)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _route(self, req: RouteRequest) -> Route:
        assert self.router is not None and self._changed is not None
        while True:
            try:
                route = self.router.route(req, time.monotonic())
            except NoInstanceAvailable as error:
                raise EngineDeadError(f"{error}; retry later") from None
            if route is not None:
                return route
            # The policy holds the request: ask again when an instance's load changes.
            self._changed.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can drop a cancel that arrives as
            # the event fires, and this loop would then go on holding a request its client gave up
            # (the DisCEdge transport hung that way, issue #23)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05):
                    await self._changed.wait()

    async def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        request_id: str,
        priority: int = 0,
        *,
        service_tier: str = "default",
        adapter_id: str | None = None,
        cache_salt: str | None = None,
        session_id: str | None = None,
        kv_transfer: KVTransferParams | None = None,
        output_kind: OutputKind = OutputKind.CUMULATIVE,
    ) -> AsyncIterator[RequestOutput]:
        """Routes and streams one request (``AsyncEngine.generate``'s contract)."""
        if self.router is None:
            raise EngineDeadError("the cluster has not started")
        ids = list(prompt) if isinstance(prompt, list) else await self.encode(prompt)
        req = self.router.request(request_id, ids, params.max_tokens, service_tier=service_tier, priority=priority,
                                  adapter_id=adapter_id, cache_salt=cache_salt, arrival_time=time.monotonic())
        options = {"priority": priority, "service_tier": service_tier, "adapter_id": adapter_id,
                   "cache_salt": cache_salt, "session_id": session_id}
        for attempt in range(len(self.instances)):
            try:
                route = await self._route(req)
                handover = None
                if route.prefill is not None:
                    handover = await self._prefill_and_hand_over(req, route, options)
            except BaseException:  # the client went away, or no instance is up, before the answer's stage began
                self.router.withdraw(req)
                raise
            stage: Stage = "decode" if route.prefill is not None else "mixed"
            produced = False
            try:
                async for out in self._stream(route.target, req, stage, params, options, kv_transfer, output_kind,
                                              handover):
                    produced = True
                    yield out
                return
            except EngineDeadError as error:
                if produced or attempt == len(self.instances) - 1:
                    raise
                log.warning("instance %s failed before answering %s (%s); routing it again",
                            route.target.name, request_id, error)

    async def _stream(
        self, view: InstanceView, req: RouteRequest, stage: Stage, params: SamplingParams, options: dict[str, Any],
        kv_transfer: KVTransferParams | None, output_kind: OutputKind, handover: Handover | None,
    ) -> AsyncIterator[RequestOutput]:
        assert self.router is not None
        instance: Instance = view.backend  # type: ignore[assignment]
        ticket = self.router.begin(view, req, stage)
        stream = instance.engine.generate(req.prompt_token_ids, params, req.request_id, kv_transfer=kv_transfer,
                                          output_kind=output_kind, **options)
        try:
            async for out in stream:
                if not ticket.prefilled and (out.finished or any(c.token_ids for c in out.outputs)):
                    self.router.prefilled(ticket)
                    self._notify()
                    if handover is not None and handover.first_token_s is None:
                        handover.first_token_s = time.monotonic() - handover.transferred_at
                        self._record(handover)
                yield out
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            self.router.end(ticket)
            self._notify()

    async def _prefill_and_hand_over(
        self, req: RouteRequest, route: Route, options: dict[str, Any]
    ) -> Handover | None:
        """Prefills ``req`` on ``route.prefill`` and hands its KV to ``route.target``. When the
        prefill instance fails, returns None: the decode instance computes the prompt itself."""
        assert self.router is not None and route.prefill is not None
        src: Instance = route.prefill.backend  # type: ignore[assignment]
        dst: Instance = route.target.backend  # type: ignore[assignment]
        # What the receiver holds is asked while the prefill runs, not after it.
        lookup = asyncio.ensure_future(self.connector.cached_blocks(dst, req.prompt_token_ids, req.adapter_id,
                                                                    options["cache_salt"]))
        ticket = self.router.begin(route.prefill, req, "prefill")
        start = time.monotonic()
        keys: list[bytes] = []
        one_token = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
        stream = src.engine.generate(req.prompt_token_ids, one_token, f"{req.request_id}@prefill",
                                     kv_transfer=KVTransferParams(export=True), output_kind=OutputKind.FINAL_ONLY,
                                     **options)
        try:
            async for out in stream:
                keys = out.kv_block_keys or []
        except EngineError as error:
            log.warning("prefill of %s on %s failed (%s); %s computes the prompt", req.request_id, src.name, error,
                        dst.name)
            return None
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            self.router.prefilled(ticket)
            self.router.end(ticket)
            self._notify()
            if not keys:
                lookup.cancel()
        prefilled = time.monotonic()
        result = TransferResult(0, 0, 0, 0, 0.0)  # a prompt shorter than a block: nothing to hand over
        if keys:
            try:
                have = await lookup
                result = await self.connector.transfer(src, dst, keys, have)
            except EngineError as error:
                log.warning("KV hand-over of %s from %s to %s failed (%s); %s computes the prompt", req.request_id,
                            src.name, dst.name, error, dst.name)
                result = TransferResult(len(keys), 0, 0, 0, time.monotonic() - prefilled)
            finally:
                with contextlib.suppress(EngineError):
                    await src.engine.control("unpin", keys=keys)
        return Handover(req.request_id, src.name, dst.name, req.num_prompt_tokens, prefilled - start, result,
                        time.monotonic())

    def _record(self, handover: Handover) -> None:
        self.handovers.append(handover)
        if self.on_handover is not None:
            self.on_handover(handover)
