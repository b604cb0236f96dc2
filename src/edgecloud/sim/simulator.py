"""The discrete-event cluster simulator: a trace's requests arrive, the cluster's ``Router`` and
routing policy (the same objects as the real router's) place them, and simulated instances (the
engine's scheduler and KV manager, steps priced by the ``PerfModel``) serve them on a virtual clock.

Events, in time order: a request arrives (the policy routes it, or holds it until an instance's
state changes); it reaches its instance ``frontend_s`` later (the router's own work: parsing,
tokenizing, sending); an instance's step ends (the scheduler applies it: tokens out, requests
finished, the next step planned at once, as the engine core's loop does); a P/D hand-over's KV
transfer ends (the blocks the decode instance lacked are imported there, by key, and the request
goes on). A token reaches the client ``delivery_s`` after its step ended. A request that arrives
while its instance is mid-step waits for the next step, as in the real core, whose loop reads new
requests between steps.

With ``decode_runs=True`` an instance whose running requests all decode advances a whole run of
such steps as one event (``edgecloud.sim.decode_run``), cut short where anything reaches or reads
the instance (a request delivered, a KV hand-over, ``stats()``) and never while the policy holds
requests (each step end would retry them) or a backlog is fed. Per-request times agree with the
default step-by-step simulation to float rounding.

The result is one ``SimRecord`` per request (client-side times) and per-instance counters.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from edgecloud.cluster.policies import RoutingPolicy
from edgecloud.cluster.router import Route, Router, RouteRequest, Ticket
from edgecloud.llm.request import KVTransferParams
from edgecloud.llm.request_state import Request
from edgecloud.llm.sampling_params import SamplingParams
from edgecloud.sim.decode_run import DecodeCredit
from edgecloud.sim.instance import SimInstance

_ARRIVE, _DELIVER, _KICK, _STEP_END, _TRANSFER_DONE = range(5)
# A streamed arrival's event order: before any other event of its instant and after the arrivals
# before it, as when every arrival is queued first.
_STREAMED = 2**62


@dataclass(frozen=True)
class SimRequest:
    """One request of a workload: when it arrives (s), its prompt, how many tokens it generates."""

    arrival_s: float
    prompt_token_ids: Sequence[int]
    output_len: int
    service_tier: str = "default"
    priority: int = 0
    adapter_id: str | None = None  # the LoRA adapter it names (docs/lora.md)


@dataclass
class SimRecord:
    """What a client would have seen of one request, in seconds from the run's start."""

    index: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int = 0
    first_token_s: float | None = None
    finish_s: float | None = None
    token_times: list[float] | None = None
    instance: str = ""
    prefill_instance: str | None = None
    cached_tokens: int = 0
    preemptions: int = 0
    error: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def e2e(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.arrival_s

    @property
    def tpot(self) -> float | None:
        if self.first_token_s is None or self.finish_s is None or self.output_tokens < 2:
            return None
        return (self.finish_s - self.first_token_s) / (self.output_tokens - 1)


@dataclass(frozen=True)
class TransferModel:
    """KV hand-over between instances: a fixed latency plus bytes over a link."""

    bandwidth: float
    latency_s: float = 0.0

    def seconds(self, num_bytes: float) -> float:
        return self.latency_s + (num_bytes / self.bandwidth if num_bytes else 0.0)


@dataclass(frozen=True)
class Backlog:
    """Offline work fed as a batch runner feeds it (OOCO, issue #19): ``requests`` in order, at
    most ``concurrency`` of them in flight; the next one is routed when one finishes, or, while
    the policy holds it, whenever an instance's state changes. Each arrives when it is routed."""

    requests: Sequence[SimRequest]
    concurrency: int

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")


@dataclass
class HandoverRecord:
    index: int
    blocks: int
    skipped: int
    bytes: float
    seconds: float


@dataclass
class SimResult:
    records: list[SimRecord]
    instances: list[SimInstance]
    handovers: list[HandoverRecord]
    simulated_s: float
    wall_s: float
    events: int
    cpu_s: float = 0.0  # this process's CPU time for the run: the speed on one core, whatever else runs

    @property
    def speedup(self) -> float:
        """Simulated seconds per wall-clock second."""
        return self.simulated_s / self.wall_s if self.wall_s > 0 else math.inf

    @property
    def cpu_speedup(self) -> float:
        """Simulated seconds per CPU second of the simulator (one core, however loaded the machine)."""
        return self.simulated_s / self.cpu_s if self.cpu_s > 0 else math.inf


@dataclass(eq=False)
class _Flight:
    index: int
    request: SimRequest
    record: SimRecord
    route_request: RouteRequest
    route: Route | None = None
    ticket: Ticket | None = None
    prefill_ticket: Ticket | None = None
    core: Request | None = None
    held_since: float | None = None
    fed: bool = False  # a backlog request
    transfer: tuple[list[bytes], list[bytes], float] | None = field(default=None, repr=False)


class ClusterSimulator:
    def __init__(
        self,
        instances: Sequence[SimInstance],
        policy: RoutingPolicy,
        *,
        fingerprint: bytes = b"edgecloud-sim",
        frontend_s: float = 0.0,
        delivery_s: float = 0.0,
        transfer: TransferModel | None = None,
        record_token_times: bool = True,
        decode_runs: bool = False,
        incremental: bool = False,
        abandon_flex_steps: bool = False,
    ) -> None:
        if not instances:
            raise ValueError("a simulated cluster needs at least one instance")
        sizes = {i.config.block_size for i in instances}
        if len(sizes) != 1:
            raise ValueError(f"every instance must use the same block_size, got {sorted(sizes)}")
        self.instances = list(instances)
        self.block_size = sizes.pop()
        for instance in instances:
            instance.kv.fingerprint = fingerprint
        self.router = Router(self.instances, policy, fingerprint, self.block_size)
        self.frontend_s = frontend_s
        self.delivery_s = delivery_s
        self.transfer = transfer
        self.record_token_times = record_token_times
        self.decode_runs = decode_runs
        if incremental and (decode_runs or record_token_times):
            raise ValueError("incremental stepping records no per-token times and replaces decode runs: "
                             "use it with record_token_times=False and decode_runs=False")
        self.incremental = incremental
        # An online request reaching an instance mid-step drops a step of flex work only after the
        # layer in flight (``SimInstance.interrupt``), as the real engine core does; off by default.
        self.abandon_flex_steps = abandon_flex_steps
        self._params: dict[int, SamplingParams] = {}

    def _sampling(self, max_tokens: int) -> SamplingParams:
        params = self._params.get(max_tokens)
        if params is None:
            params = self._params[max_tokens] = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
        return params

    def run(self, workload: Iterable[SimRequest], *, until_s: float | None = None,
            backlog: Backlog | None = None) -> SimResult:
        """Replays ``workload`` (and feeds ``backlog``) until every request is done, or until
        ``until_s`` simulated seconds (requests then in flight keep the tokens they had). A
        workload that is not a ``Sequence`` is streamed: read one request ahead, in arrival order,
        so that only the requests in flight are held (a cluster's hour of requests)."""
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        heap: list[tuple[float, int, int, object]] = []
        seq = itertools.count()
        push = heapq.heappush
        flights: dict[str, _Flight] = {}
        held: deque[_Flight] = deque()
        handovers: list[HandoverRecord] = []
        records: list[SimRecord] = []

        def arrival(req: SimRequest) -> _Flight:
            index = len(records)
            record = SimRecord(index, req.arrival_s, len(req.prompt_token_ids),
                               token_times=[] if self.record_token_times else None)
            records.append(record)
            route_request = self.router.request(str(index), req.prompt_token_ids, req.output_len,
                                                service_tier=req.service_tier, priority=req.priority,
                                                adapter_id=req.adapter_id, arrival_time=req.arrival_s)
            return _Flight(index, req, record, route_request)

        streamed = None if isinstance(workload, Sequence) else iter(workload)
        last_arrival = -math.inf

        def stream_next() -> None:
            nonlocal last_arrival
            req = next(streamed, None)  # type: ignore[call-overload]
            if req is None:
                return
            if req.arrival_s < last_arrival:
                raise ValueError(f"a streamed workload must come in arrival order: arrival_s {req.arrival_s} "
                                 f"after {last_arrival}")
            last_arrival = req.arrival_s
            flight = arrival(req)
            push(heap, (req.arrival_s, flight.index - _STREAMED, _ARRIVE, flight))

        if streamed is None:
            for req in workload:
                push(heap, (req.arrival_s, next(seq), _ARRIVE, arrival(req)))
        else:
            stream_next()
        now = 0.0
        events = 0

        def core_request(flight: _Flight, request_id: str, max_tokens: int, export: bool, at: float) -> Request:
            req = flight.request
            return Request(
                request_id=request_id, prompt_token_ids=list(req.prompt_token_ids), params=self._sampling(max_tokens),
                arrival_time=at, order=0, priority=req.priority, service_tier=req.service_tier,
                adapter_id=req.adapter_id, kv_transfer=KVTransferParams(export=True) if export else None,
                all_token_ids=list(req.prompt_token_ids), block_tables=[[]],
                # the router hashed the prompt's blocks already (same keys: the same fingerprint)
                key_hint=(flight.route_request.root, flight.route_request.block_keys),
            )

        fed = 0  # backlog requests routed so far
        feeding = 0  # of them, in flight
        waiting: _Flight | None = None  # the next backlog request, while the policy holds it

        def feed(at: float) -> None:
            nonlocal fed, feeding, waiting
            while backlog is not None and feeding < backlog.concurrency:
                if waiting is None:
                    if fed >= len(backlog.requests):
                        return
                    req = replace(backlog.requests[fed], arrival_s=at)
                    index = len(records)
                    record = SimRecord(index, at, len(req.prompt_token_ids),
                                       token_times=[] if self.record_token_times else None)
                    records.append(record)
                    route_request = self.router.request(str(index), req.prompt_token_ids, req.output_len,
                                                        service_tier=req.service_tier, priority=req.priority,
                                                        arrival_time=at)
                    waiting = _Flight(index, req, record, route_request, fed=True)
                    fed += 1
                if not try_route(waiting, at):
                    return
                waiting = None
                feeding += 1

        kicks: set[str] = set()  # idle instances with a step start queued at the current time

        def kick(instance: SimInstance, at: float) -> None:
            if instance.busy:
                return
            if self.decode_runs and backlog is None and not held:
                end = instance.start_run(at)
            else:
                duration = instance.start_step(at)
                end = None if duration is None else at + duration
            if end is not None:
                push(heap, (end, next(seq), _STEP_END, (instance, instance.serial)))

        def credit(credit: DecodeCredit) -> None:
            """Records the tokens a run of decode steps sampled."""
            seen = [at + self.delivery_s for at in credit.times]
            for req in credit.requests:
                flight = flights.get(req.request_id)
                if flight is None:
                    continue
                flight.record.output_tokens += len(seen)
                if flight.record.token_times is not None:
                    flight.record.token_times.extend(seen)

        def settle(instance: SimInstance, at: float) -> None:
            """Cuts ``instance``'s run short at ``at``, before anything reaches or reads it."""
            if instance.run is None:
                return
            done, end = instance.settle(at)
            credit(done)
            instance.serial += 1
            push(heap, (end, next(seq), _STEP_END, (instance, instance.serial)))

        def observe(instance: SimInstance) -> None:
            settle(instance, now)

        def kick_soon(instance: SimInstance, at: float) -> None:
            """Start a step after every other event of this instant: requests that reach an idle
            instance together are batched together, as the core reads all pending ones first."""
            if not instance.busy and instance.name not in kicks:
                kicks.add(instance.name)
                push(heap, (at, next(seq), _KICK, instance))

        def dispatch(flight: _Flight, route: Route, at: float) -> None:
            flight.route = route
            req = flight.route_request
            if route.prefill is not None:
                flight.prefill_ticket = self.router.begin(route.prefill, req, "prefill")
                flight.record.prefill_instance = route.prefill.name
                flights[f"{flight.index}@prefill"] = flight
                core = core_request(flight, f"{flight.index}@prefill", 1, True, at + self.frontend_s)
                push(heap, (at + self.frontend_s, next(seq), _DELIVER, (route.prefill.backend, core)))
            else:
                deliver_decode(flight, at + self.frontend_s, "mixed")

        def deliver_decode(flight: _Flight, at: float, stage: str) -> None:
            route = flight.route
            assert route is not None
            flight.ticket = self.router.begin(route.target, flight.route_request, stage)  # type: ignore[arg-type]
            flight.record.instance = route.target.name
            flights[str(flight.index)] = flight
            flight.core = core_request(flight, str(flight.index), flight.request.output_len, False, at)
            push(heap, (at, next(seq), _DELIVER, (route.target.backend, flight.core)))

        def try_route(flight: _Flight, at: float) -> bool:
            route = self.router.route(flight.route_request, at)
            if route is None:
                return False
            dispatch(flight, route, at)
            return True

        def retry_held(at: float) -> None:
            for _ in range(len(held)):
                flight = held.popleft()
                if not try_route(flight, at):
                    held.append(flight)

        if self.decode_runs:
            for instance in self.instances:
                instance.observer = observe
        if self.incremental:
            for instance in self.instances:
                if instance.lazy is None:
                    instance.enable_incremental()
        feed(0.0)
        while heap:
            at, _, kind, item = heapq.heappop(heap)
            if kind == _STEP_END and item[1] != item[0].serial:  # type: ignore[index]
                continue  # the end of a run that was cut short
            if until_s is not None and at > until_s:
                now = until_s
                for instance in self.instances:
                    settle(instance, now)
                break
            now = at
            events += 1
            if kind == _ARRIVE:
                flight = item  # type: ignore[assignment]
                if streamed is not None:
                    stream_next()
                if not try_route(flight, now):  # type: ignore[arg-type]
                    flight.held_since = now  # type: ignore[union-attr]
                    held.append(flight)  # type: ignore[arg-type]
                    for instance in self.instances:  # from now on every step end retries it
                        settle(instance, now)
            elif kind == _DELIVER:
                instance, core = item  # type: ignore[misc]
                settle(instance, now)
                instance.add(core)
                if self.abandon_flex_steps and core.service_tier == "default" and instance.busy:
                    end = instance.interrupt(now)
                    if end is not None:
                        instance.serial += 1  # the step's old end event is void
                        push(heap, (end, next(seq), _STEP_END, (instance, instance.serial)))
                kick_soon(instance, now)
            elif kind == _KICK:
                kicks.discard(item.name)  # type: ignore[union-attr]
                kick(item, now)  # type: ignore[arg-type]
            elif kind == _STEP_END:
                instance = item[0]  # type: ignore[index]
                if instance.run is not None:
                    credit(instance.end_run())
                for out in instance.end_step():
                    flight = flights.get(out.request_id)
                    if flight is None:
                        continue
                    if out.request_id.endswith("@prefill"):
                        if out.finished:
                            del flights[out.request_id]
                            settle(flight.route.target.backend, now)  # type: ignore[union-attr, arg-type]
                            self._prefilled(flight, out.kv_block_keys or [], now, heap, seq, handovers)
                        continue
                    record = flight.record
                    if out.new_token_ids:
                        seen = now + self.delivery_s
                        if record.first_token_s is None:
                            record.first_token_s = seen
                            record.cached_tokens = out.num_cached_tokens or 0
                            self.router.prefilled(flight.ticket)  # type: ignore[arg-type]
                        record.output_tokens += len(out.new_token_ids)
                        if record.token_times is not None:
                            record.token_times.append(seen)
                    if out.finished:
                        if self.incremental:  # lazily advanced decodes report their tokens at the end
                            record.output_tokens = flight.core.num_output_tokens  # type: ignore[union-attr]
                        record.finish_s = now + self.delivery_s
                        if out.finish_reason not in ("stop", "length"):
                            record.error = out.finish_reason
                        record.preemptions = flight.core.num_preemptions if flight.core else 0
                        self.router.end(flight.ticket)  # type: ignore[arg-type]
                        del flights[out.request_id]
                        if flight.fed:
                            feeding -= 1
                kick(instance, now)  # type: ignore[arg-type]
                if held:
                    retry_held(now)
                feed(now)
            elif kind == _TRANSFER_DONE:
                flight = item  # type: ignore[assignment]
                keys, missing, _ = flight.transfer  # type: ignore[union-attr, misc]
                route = flight.route  # type: ignore[union-attr]
                src: SimInstance = route.prefill.backend  # type: ignore[union-attr, assignment]
                dst: SimInstance = route.target.backend  # type: ignore[union-attr, assignment]
                settle(src, now)
                settle(dst, now)
                exports = src.kv.export_blocks(missing)
                dst.kv.import_blocks([(e.key, e.parent, e.tokens) for e in exports])
                src.kv.unpin(keys)
                kick_soon(src, now)  # pinned blocks may have kept a waiting request out
                deliver_decode(flight, now, "decode")  # type: ignore[arg-type]
        for instance in self.instances:
            instance.observer = None
            if instance.lazy is not None:  # write the decodes back (a time limit leaves some in flight)
                instance.lazy.clear()
                if not instance.busy:
                    instance._rebuild_lazy()
        if self.incremental:
            for flight in flights.values():
                if flight.core is not None and flight.record.finish_s is None:
                    flight.record.output_tokens = flight.core.num_output_tokens
        return SimResult(records, self.instances, handovers, now, time.perf_counter() - start_wall, events,
                         time.process_time() - start_cpu)

    def _prefilled(
        self, flight: _Flight, keys: list[bytes], now: float, heap: list[tuple[float, int, int, object]],
        seq: itertools.count, handovers: list[HandoverRecord],
    ) -> None:
        """The prefill stage ended: hand the KV the decode instance lacks over to it."""
        self.router.prefilled(flight.prefill_ticket)  # type: ignore[arg-type]
        self.router.end(flight.prefill_ticket)  # type: ignore[arg-type]
        route = flight.route
        assert route is not None and route.prefill is not None
        dst: SimInstance = route.target.backend  # type: ignore[assignment]
        req = flight.route_request
        have = dst.kv.lookup(list(req.prompt_token_ids), req.root) // self.block_size
        missing = keys[have:]
        block_bytes = dst.perf.model.kv_bytes_per_token * self.block_size
        size = len(missing) * block_bytes
        if self.transfer is None:
            raise ValueError("a P/D route needs a TransferModel (the link between instances)")
        seconds = self.transfer.seconds(size)
        flight.transfer = (keys, missing, seconds)
        handovers.append(HandoverRecord(flight.index, len(keys), min(have, len(keys)), size, seconds))
        heapq.heappush(heap, (now + seconds, next(seq), _TRANSFER_DONE, flight))
