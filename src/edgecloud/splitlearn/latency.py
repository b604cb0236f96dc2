"""Latency model of split-learning training: what a round costs for a given plan (C2P2SL Sec. III).

A *plan* fixes the schedule (sequential split learning, or C2P2SL's pipelined micro-batches),
the cut layer, the number of micro-batches of every UE and every UE's uplink bandwidth share.
The model turns a plan into times from three measured ingredients: per-block FLOPs and
activation sizes (``profiling.profile_model``), the calibrated host speed with each device's
slowdown (``profiling.ComputeSpeed``) and Shannon link rates (``wireless``).

Two views of the same plan:

* ``simulate`` replays the exact schedule the runtime executes, event by event and round after
  round: UE forwards back to back, FIFO uplink per UE, one BS processor serving micro-batches in
  arrival order, a downlink per UE, UE backwards in order as gradients arrive, SGD steps, and the
  client-model averaging every ``rounds_per_sync`` rounds. Pipeline fill and drain fall out of the replay.
  It is the model's prediction of the wall clock (``predicted_s``).
* ``round_time_bound`` is the closed form the optimiser works on: a permutation flow shop of
  ``m_k`` equal micro-batches per UE through (forward, uplink, BS, downlink), then the backwards,
  bounded below by the BS's total work. It is linear in the discrete choices once the uplink
  shares are fixed and convex in the shares once the discrete choices are fixed — the structure
  the alternating optimisation of ``optimizer`` exploits.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from edgecloud.splitlearn.wireless import shannon_rate_bps, transfer_seconds

if TYPE_CHECKING:  # profiling pulls in scipy and the flop counter; the runtime needs neither
    from edgecloud.splitlearn.profiling import ComputeSpeed, ModelProfile

Schedule = Literal["sequential", "c2p2sl"]
SCHEDULES: tuple[Schedule, ...] = ("sequential", "c2p2sl")


@dataclass(frozen=True)
class UEConfig:
    """One UE: how many times slower than this host it computes, and its channel SNR."""

    slowdown: float
    snr_db: float

    def __post_init__(self) -> None:
        if self.slowdown < 1.0:
            raise ValueError(
                f"slowdown must be >= 1 (a UE is never faster than this host), got {self.slowdown}"
            )


@dataclass(frozen=True)
class Scenario:
    profile: ModelProfile
    speed: ComputeSpeed
    ues: tuple[UEConfig, ...]
    batch_per_ue: int
    bandwidth_hz: float
    rounds_per_sync: int = 1  # rounds between client-model averagings, which are spread over them
    message_latency_s: float = 0.0  # per message, on top of serialisation (transport.measure_message_latency)
    # What a receiver pays to take a message that arrived before it asked for it: gloo moves a
    # message only once the receiver has posted its receive, so a UE that asks for a gradient the
    # BS sent while it was computing waits for that hand-off (transport.measure_late_receive).
    late_receive_s: float = 0.0
    # Host cores the devices' computations share; 0: every device has its own processor (the pure
    # model). The emulation runs every device as a process on one host (``simulate``'s docstring).
    host_cores: int = 0
    # Wall time each micro-batch costs its UE beyond what the model otherwise counts (its
    # computations' CPU time x slowdown, the links, the hand-offs): the Python around each
    # computation, a wake-up from its sleep that the slack does not absorb, the in-situ CPU the
    # calibration missed. Not a constant: the bench measures it in a pilot of the very plan, as
    # the value that makes this replay reproduce the pilot's wall clock
    # (``bench.fit_micro_batch_overhead``); it may be negative (the calibration over-counted).
    # Added to each micro-batch's forward on the UE's timeline, where it holds no host core.
    micro_batch_overhead_s: float = 0.0

    def __post_init__(self) -> None:
        if self.host_cores < 0:
            raise ValueError(f"host_cores must be >= 0 (0: unlimited), got {self.host_cores}")
        if self.late_receive_s < 0:
            raise ValueError(f"late_receive_s must be >= 0, got {self.late_receive_s}")

    @property
    def num_ues(self) -> int:
        return len(self.ues)


@dataclass(frozen=True)
class Plan:
    schedule: Schedule
    cut: int
    micro_batches: tuple[int, ...]
    uplink_shares: tuple[float, ...]

    def validate(self, scenario: Scenario) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.cut not in scenario.profile.cuts:
            cuts = scenario.profile.cuts
            raise ValueError(f"cut must be in {cuts.start}..{cuts.stop - 1}, got {self.cut}")
        k = scenario.num_ues
        if len(self.micro_batches) != k or len(self.uplink_shares) != k:
            raise ValueError(f"micro_batches and uplink_shares need one entry per UE ({k})")
        for m in self.micro_batches:
            if not 1 <= m <= scenario.batch_per_ue:
                raise ValueError(f"micro_batches must be in 1..{scenario.batch_per_ue}, got {m}")
        if any(b <= 0 for b in self.uplink_shares) or sum(self.uplink_shares) > 1 + 1e-9:
            raise ValueError(f"uplink_shares must be > 0 and sum to <= 1, got {self.uplink_shares}")


def micro_batch_sizes(batch: int, count: int) -> list[int]:
    """Near-equal sizes, largest first — the split ``torch.tensor_split`` makes."""
    return [batch // count + (1 if i < batch % count else 0) for i in range(count)]


@dataclass(frozen=True)
class Messages:
    """Bytes of each message the runtime sends; the runtime builds its tensors from the same sizes."""

    profile: ModelProfile
    cut: int

    @property
    def activation_width(self) -> int:
        return self.profile.blocks[self.cut - 1].output_elements

    def uplink_elements(self, size: float) -> float:
        """Activations plus one label column."""
        return size * (self.activation_width + 1)

    def downlink_elements(self, size: float) -> float:
        return size * self.activation_width

    @property
    def parameter_elements(self) -> int:
        return sum(b.parameter_elements for b in self.profile.blocks[: self.cut])

    def nbytes(self, elements: float) -> float:
        return elements * self.profile.element_bytes


CONTROL_ELEMENTS = 1  # a control message carries one number (round index or command)


@dataclass(frozen=True)
class LinkRates:
    """Bit rates of every UE's links under a plan."""

    uplink_bps: tuple[float, ...]
    downlink_bps: tuple[float, ...]
    full_bps: tuple[float, ...]  # the whole band: client-model averaging, one UE at a time


def link_rates(ues: tuple[UEConfig, ...], bandwidth_hz: float, plan: Plan) -> LinkRates:
    full = tuple(shannon_rate_bps(bandwidth_hz, 1.0, u.snr_db) for u in ues)
    if plan.schedule == "sequential":
        # One UE is served at a time, so it holds the whole band in both directions.
        return LinkRates(full, full, full)
    uplink = tuple(
        shannon_rate_bps(bandwidth_hz, b, u.snr_db) for b, u in zip(plan.uplink_shares, ues, strict=True)
    )
    downlink = tuple(shannon_rate_bps(bandwidth_hz, 1.0 / len(ues), u.snr_db) for u in ues)
    return LinkRates(uplink, downlink, full)


class StageTimes:
    """Per-UE stage times of a plan, for a micro-batch of ``size`` samples."""

    def __init__(self, scenario: Scenario, plan: Plan) -> None:
        self.scenario = scenario
        self.plan = plan
        self.messages = Messages(scenario.profile, plan.cut)
        rates = link_rates(scenario.ues, scenario.bandwidth_hz, plan)
        self.latency = scenario.message_latency_s
        self.late_receive = scenario.late_receive_s
        self.overhead = scenario.micro_batch_overhead_s
        self.uplink_bps, self.downlink_bps, self.full_bps = (
            rates.uplink_bps,
            rates.downlink_bps,
            rates.full_bps,
        )

    def forward_cpu(self, size: float) -> float:
        """Host CPU seconds of a UE forward of ``size`` samples (before the UE's slowdown)."""
        s = self.scenario
        return s.speed.ue_forward_s(s.profile, self.plan.cut, size)

    def backward_cpu(self, size: float) -> float:
        s = self.scenario
        return s.speed.ue_backward_s(s.profile, self.plan.cut, size)

    def forward(self, ue: int, size: float) -> float:
        """A micro-batch's forward on UE ``ue``'s timeline, its per-micro-batch overhead included."""
        return max(0.0, self.scenario.ues[ue].slowdown * self.forward_cpu(size) + self.overhead)

    def backward(self, ue: int, size: float) -> float:
        return self.scenario.ues[ue].slowdown * self.backward_cpu(size)

    def bs(self, size: float) -> float:
        s = self.scenario
        return s.speed.bs_s(s.profile, self.plan.cut, size)

    def uplink(self, ue: int, size: float) -> float:
        return transfer_seconds(
            self.messages.nbytes(self.messages.uplink_elements(size)), self.uplink_bps[ue]
        )

    def downlink(self, ue: int, size: float) -> float:
        return transfer_seconds(
            self.messages.nbytes(self.messages.downlink_elements(size)), self.downlink_bps[ue]
        )

    def control_down(self, ue: int) -> float:
        return transfer_seconds(self.messages.nbytes(CONTROL_ELEMENTS), self.downlink_bps[ue])

    def control_up(self, ue: int) -> float:
        return transfer_seconds(self.messages.nbytes(CONTROL_ELEMENTS), self.uplink_bps[ue])

    def ue_step(self, ue: int) -> float:
        s = self.scenario
        return s.ues[ue].slowdown * s.speed.optimizer_s(s.profile, 0, self.plan.cut)

    def bs_step(self) -> float:
        s = self.scenario
        return s.speed.optimizer_s(s.profile, self.plan.cut, len(s.profile.blocks))

    def ue_cpu_per_round(self, ue: int) -> float:
        """Host CPU seconds of UE ``ue``'s computations in one round (before its slowdown)."""
        sizes = micro_batch_sizes(self.scenario.batch_per_ue, self.plan.micro_batches[ue])
        compute = sum(self.forward_cpu(size) + self.backward_cpu(size) for size in sizes)
        return compute + self.ue_step(ue) / self.scenario.ues[ue].slowdown

    def sync_transfer(self, ue: int) -> float:
        """Client-model upload or download at a sync: one UE at a time, whole band."""
        return transfer_seconds(self.messages.nbytes(self.messages.parameter_elements), self.full_bps[ue])

    def sync_control(self, ue: int) -> float:
        return transfer_seconds(self.messages.nbytes(CONTROL_ELEMENTS), self.full_bps[ue])


@dataclass
class _Clocks:
    ue_free: list[float]
    uplink_free: list[float]
    downlink_free: list[float]
    bs_free: float


def _pipelined_round(st: StageTimes, c: _Clocks) -> None:
    k_count = st.scenario.num_ues
    sizes = [micro_batch_sizes(st.scenario.batch_per_ue, m) for m in st.plan.micro_batches]
    arrivals: list[tuple[float, int, int]] = []
    forwards_done = []
    for k in range(k_count):
        t = c.ue_free[k]
        for i, size in enumerate(sizes[k]):
            t += st.forward(k, size)
            c.uplink_free[k] = max(t, c.uplink_free[k]) + st.uplink(k, size)
            arrivals.append((c.uplink_free[k] + st.latency, k, i))
        forwards_done.append(t)
    arrivals.sort()
    gradient_at: dict[tuple[int, int], float] = {}
    bs = c.bs_free
    for arrival, k, i in arrivals:
        bs = max(bs, arrival) + st.bs(sizes[k][i])
        c.downlink_free[k] = max(bs, c.downlink_free[k]) + st.downlink(k, sizes[k][i])
        gradient_at[k, i] = c.downlink_free[k] + st.latency
    c.bs_free = bs + st.bs_step()
    for k in range(k_count):
        t = forwards_done[k]
        for i, size in enumerate(sizes[k]):
            t = take(t, gradient_at[k, i], st.late_receive) + st.backward(k, size)
        c.ue_free[k] = t + st.ue_step(k)


def take(ready: float, arrival: float, late_receive: float) -> float:
    """When a receiver that asks at ``ready`` has a message that would arrive at ``arrival``.

    gloo moves a message once the receiver has posted its receive: a receiver already waiting
    gets it on arrival, one that asks after it was sent waits ``late_receive`` for the hand-off
    (its request reaches the sender, the message comes over, its thread wakes)."""
    return max(arrival, ready + late_receive)


def _sequential_round(st: StageTimes, c: _Clocks) -> None:
    batch = st.scenario.batch_per_ue
    t = c.bs_free
    lat = st.latency
    for k in range(st.scenario.num_ues):
        t = max(t, c.downlink_free[k]) + st.control_down(k) + lat
        t = max(t, c.ue_free[k]) + st.forward(k, batch) + st.uplink(k, batch) + lat
        t += st.bs(batch) + st.downlink(k, batch) + lat + st.backward(k, batch) + st.ue_step(k)
        c.ue_free[k] = t
        t += st.control_up(k) + lat
        c.uplink_free[k] = c.downlink_free[k] = t
    c.bs_free = t + st.bs_step()


def _sync(st: StageTimes, c: _Clocks) -> None:
    """BS asks each UE in turn for its client model, averages, sends it back to each in turn."""
    t, lat = c.bs_free, st.latency
    for k in range(st.scenario.num_ues):
        t = max(t, c.downlink_free[k]) + st.sync_control(k) + lat
        t = max(t, c.ue_free[k], c.uplink_free[k]) + st.sync_transfer(k)
        c.uplink_free[k] = t
        t += lat
    for k in range(st.scenario.num_ues):
        # The BS waits for each download to be delivered before starting the next.
        t = max(t, c.downlink_free[k]) + st.sync_transfer(k)
        c.downlink_free[k] = t
        t += lat
        c.ue_free[k] = t
    c.bs_free = t


# ------------------------------------------------------------------------- computations on shared cores


@dataclass(frozen=True)
class _Compute:
    """A process asks for a core at ``at`` for ``host_s`` CPU seconds; it resumes with the end."""

    at: float
    host_s: float


@dataclass(frozen=True)
class _Await:
    """Wait for message ``key``; resumes with its arrival time."""

    key: tuple[object, ...]


@dataclass(frozen=True)
class _NextActivation:
    """The BS, free at ``at``, takes the earliest-arrived activation of round ``round``."""

    at: float
    round: int


_Request = _Compute | _Await | _NextActivation
_Process = Generator[_Request, object, None]


class _SharedHost:
    """Event-driven replay in which the devices' computations share ``cores`` host cores.

    Every device is a generator that yields what it needs next. A computation asks for a core
    when its process is ready and gets the first core to come free, in the order the requests
    become ready (the OS run queue of the emulation, without priorities). Messages are delivered
    at their arrival time, before anything else that happens at that instant.
    """

    def __init__(self, cores: int) -> None:
        self.core_free = [0.0] * cores  # a heap of when each core comes free
        self.events: list[tuple[float, int, int, Callable[[], None]]] = []
        self.order = itertools.count()
        self.arrived: dict[tuple[object, ...], float] = {}
        self.waiting: dict[tuple[object, ...], _Process] = {}
        self.activations: list[tuple[int, float, int, int]] = []  # heap: (round, arrival, ue, index)
        self.bs: tuple[_Process, int] | None = None  # the BS waiting for an activation of a round

    def _at(self, t: float, delivery: bool, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (t, 0 if delivery else 1, next(self.order), action))

    def start(self, process: _Process) -> None:
        self._resume(process, None)

    def post(self, key: tuple[object, ...], arrival: float) -> None:
        def deliver() -> None:
            self.arrived[key] = arrival
            if key in self.waiting:
                self._resume(self.waiting.pop(key), arrival)

        self._at(arrival, True, deliver)

    def post_activation(self, r: int, ue: int, index: int, arrival: float) -> None:
        def deliver() -> None:
            heapq.heappush(self.activations, (r, arrival, ue, index))
            if self.bs is not None and self.bs[1] == r:
                # Wake after every delivery of this instant, to take the earliest (arrival, UE, index).
                process, self.bs = self.bs[0], None
                self._at(arrival, False, lambda: self._take_activation(process, r))

        self._at(arrival, True, deliver)

    def _take_activation(self, process: _Process, r: int) -> None:
        if self.activations and self.activations[0][0] == r:
            self._resume(process, heapq.heappop(self.activations))
        else:
            self.bs = (process, r)

    def _grant(self, process: _Process, request: _Compute) -> None:
        start = max(request.at, heapq.heappop(self.core_free))
        heapq.heappush(self.core_free, start + request.host_s)
        self._resume(process, start + request.host_s)

    def _resume(self, process: _Process, value: object) -> None:
        try:
            request = process.send(value)
        except StopIteration:
            return
        if isinstance(request, _Compute):
            self._at(request.at, False, lambda: self._grant(process, request))
        elif isinstance(request, _Await):
            if request.key in self.arrived:
                self._at(self.arrived[request.key], True, lambda: self._resume(process, self.arrived[request.key]))
            else:
                self.waiting[request.key] = process
        else:
            self._at(request.at, False, lambda: self._take_activation(process, request.round))

    def run(self) -> None:
        while self.events:
            _, _, _, action = heapq.heappop(self.events)
            action()


@dataclass
class _EmulatedDevice:
    """A slowed UE as ``runtime._Device`` emulates it: its own timeline, a process on the host.

    ``timeline`` is when the device is free on its timeline; ``awake`` when its process is, which
    is later only when waiting for a core took more than the computation's slack.
    """

    timeline: float
    awake: float
    factor: float

    def receive(self, arrival: float, late_receive: float = 0.0) -> None:
        self.timeline = self.awake = take(self.awake, arrival, late_receive)

    def compute(self, device_s: float, host_s: float | None = None) -> Generator[_Request, object, None]:
        """``device_s`` on the timeline, holding a core for ``host_s`` (default: its CPU share)."""
        host_s = device_s / self.factor if host_s is None else host_s
        core_end = yield _Compute(self.awake, host_s)
        assert isinstance(core_end, float)
        self.timeline += device_s
        self.awake = max(self.timeline, core_end)


def _bs_compute(at: float, host_s: float) -> Generator[_Request, object, float]:
    end = yield _Compute(at, host_s)
    assert isinstance(end, float)
    return end


def _ue_on_host(
    host: _SharedHost, st: StageTimes, c: _Clocks, k: int, rounds: int, rounds_per_sync: int
) -> _Process:
    """UE ``k`` of a C2P2SL run, as ``_pipelined_round`` times it, computing on the shared host."""
    device = _EmulatedDevice(c.ue_free[k], c.ue_free[k], st.scenario.ues[k].slowdown)
    sizes = micro_batch_sizes(st.scenario.batch_per_ue, st.plan.micro_batches[k])
    for r in range(rounds):
        for i, size in enumerate(sizes):
            yield from device.compute(st.forward(k, size), host_s=st.forward_cpu(size))
            # The sender paces from the device's timeline but cannot send before the process is awake.
            c.uplink_free[k] = max(device.timeline, c.uplink_free[k]) + st.uplink(k, size)
            host.post_activation(r, k, i, max(c.uplink_free[k], device.awake) + st.latency)
        for i, size in enumerate(sizes):
            arrival = yield _Await(("gradient", r, k, i))
            assert isinstance(arrival, float)
            device.receive(arrival, st.late_receive)
            yield from device.compute(st.backward(k, size))
        yield from device.compute(st.ue_step(k))
        c.ue_free[k] = device.awake
        if (r + 1) % rounds_per_sync == 0 or r + 1 == rounds:
            host.post(("done", r, k), device.awake)
            synced = yield _Await(("synced", r, k))
            assert isinstance(synced, float)
            device.receive(synced)


def _bs_on_host(
    host: _SharedHost, st: StageTimes, c: _Clocks, rounds: int, rounds_per_sync: int, ends: list[float]
) -> _Process:
    """The BS of a C2P2SL run, as ``_pipelined_round`` and ``_sync`` time it, on the shared host."""
    k_count = st.scenario.num_ues
    sizes = [micro_batch_sizes(st.scenario.batch_per_ue, m) for m in st.plan.micro_batches]
    for r in range(rounds):
        bs = c.bs_free
        for _ in range(sum(st.plan.micro_batches)):
            taken = yield _NextActivation(bs, r)
            assert isinstance(taken, tuple)
            _, arrival, k, i = taken
            bs = yield from _bs_compute(max(bs, arrival), st.bs(sizes[k][i]))
            c.downlink_free[k] = max(bs, c.downlink_free[k]) + st.downlink(k, sizes[k][i])
            host.post(("gradient", r, k, i), c.downlink_free[k] + st.latency)
        c.bs_free = yield from _bs_compute(bs, st.bs_step())
        if (r + 1) % rounds_per_sync == 0 or r + 1 == rounds:
            for k in range(k_count):
                done = yield _Await(("done", r, k))
                assert isinstance(done, float)
                c.ue_free[k] = done
            _sync(st, c)  # no computation: the averaging's own CPU time is not modelled
            for k in range(k_count):
                host.post(("synced", r, k), c.ue_free[k])
        ends.append(c.bs_free)


def _pipelined_on_shared_host(st: StageTimes, c: _Clocks, rounds: int, rounds_per_sync: int) -> list[float]:
    host = _SharedHost(st.scenario.host_cores)
    ends: list[float] = []
    for k in range(st.scenario.num_ues):
        host.start(_ue_on_host(host, st, c, k, rounds, rounds_per_sync))
    host.start(_bs_on_host(host, st, c, rounds, rounds_per_sync, ends))
    host.run()
    if len(ends) != rounds:
        raise RuntimeError(f"shared-host replay stalled after {len(ends)} of {rounds} rounds")
    return ends


@dataclass(frozen=True)
class Prediction:
    total_s: float
    round_end_s: tuple[float, ...]  # when the BS finished each round (sync included), from t=0


def simulate(scenario: Scenario, plan: Plan, rounds: int, rounds_per_sync: int) -> Prediction:
    """Replay ``rounds`` rounds of the runtime's schedule; t=0 is when the BS sends "start"."""
    plan.validate(scenario)
    if rounds < 1 or rounds_per_sync < 1:
        raise ValueError(f"rounds and rounds_per_sync must be >= 1, got {rounds}, {rounds_per_sync}")
    st = StageTimes(scenario, plan)
    k = scenario.num_ues
    start = [st.control_down(i) + st.latency for i in range(k)]
    clocks = _Clocks(ue_free=start, uplink_free=[0.0] * k, downlink_free=list(start), bs_free=0.0)
    if plan.schedule == "c2p2sl" and scenario.host_cores > 0:
        ends = _pipelined_on_shared_host(st, clocks, rounds, rounds_per_sync)
        return Prediction(total_s=max(clocks.bs_free, *clocks.ue_free), round_end_s=tuple(ends))
    # Sequential split learning never has two computations ready at once (the BS serves one UE at
    # a time and waits for it), so sharing the host's cores changes nothing and the replay is exact.
    ends = []
    for r in range(rounds):
        if plan.schedule == "sequential":
            _sequential_round(st, clocks)
        else:
            _pipelined_round(st, clocks)
        if (r + 1) % rounds_per_sync == 0 or r + 1 == rounds:
            _sync(st, clocks)
        ends.append(clocks.bs_free)
    return Prediction(total_s=max(clocks.bs_free, *clocks.ue_free), round_end_s=tuple(ends))


@dataclass(frozen=True)
class UEBoundTerms:
    """Stage times of one UE's ``m`` equal micro-batches; the uplink time is ``U / share``.

    The UE's round in the flow-shop bound is
    ``max(A + (m-1)·M + g, m·(f+g), A + m·g) + step`` with ``A = f+u+s+d`` and
    ``M = max(f,u,s,d)``: the last gradient's return, the UE's own compute, and the backward
    chain that starts with the first gradient. Expanding the inner max, it is the max of
    *pieces* ``const + coef · U / share`` — each convex and decreasing in the share.
    """

    m: int
    f: float
    s: float
    d: float
    g: float
    uplink_s_at_full_share: float
    step: float
    latency: float = 0.0  # per message; a micro-batch's path has two (up and down)
    late_receive: float = 0.0  # per gradient that arrived before the UE asked for it

    def pieces(self) -> list[tuple[float, float]]:
        """(const, coef) with round time ``max(const + coef * U / share)``.

        A UE busy computing takes every gradient late (``m`` hand-offs); a backward chain that
        starts with the first gradient takes the other ``m - 1`` late."""
        m, f, s, d, g, step, h = self.m, self.f, self.s, self.d, self.g, self.step, self.late_receive
        rest = f + s + d + g + step + 2 * self.latency
        pieces = [
            (rest, float(m)),
            (m * (f + g + h) + step, 0.0),
            (f + s + d + m * g + (m - 1) * h + step + 2 * self.latency, 1.0),
        ]
        if m > 1:
            pieces += [(rest + (m - 1) * other, 1.0) for other in (f, s, d)]
        return pieces

    def round_s(self, share: float) -> float:
        u = self.uplink_s_at_full_share / share
        return max(const + coef * u for const, coef in self.pieces())

    def min_share(self, t: float) -> float:
        """Smallest share with ``round_s(share) <= t``; ``inf`` when no share is enough."""
        need = 0.0
        for const, coef in self.pieces():
            if const >= t:
                if coef > 0 or const > t:
                    return float("inf")
                continue
            need = max(need, coef * self.uplink_s_at_full_share / (t - const))
        return need


def bound_terms(scenario: Scenario, cut: int, ue: int, m: int) -> UEBoundTerms:
    """The closed-form terms of UE ``ue`` with ``m`` equal micro-batches at cut ``cut``."""
    plan = Plan("c2p2sl", cut, (1,) * scenario.num_ues, (1.0 / scenario.num_ues,) * scenario.num_ues)
    st = StageTimes(scenario, plan)
    size = scenario.batch_per_ue / m
    # Sizes are fractional here: the bound treats micro-batches as equal, which they are to within one sample.
    msg = st.messages
    full = shannon_rate_bps(scenario.bandwidth_hz, 1.0, scenario.ues[ue].snr_db)
    return UEBoundTerms(
        m=m,
        f=st.forward(ue, size),
        s=st.bs(size),
        d=st.downlink(ue, size),
        g=st.backward(ue, size),
        uplink_s_at_full_share=8.0 * msg.nbytes(1) * (msg.activation_width + 1) * size / full,
        step=st.ue_step(ue),
        latency=scenario.message_latency_s,
        late_receive=scenario.late_receive_s,
    )


def bs_bound(scenario: Scenario, cut: int, micro_batches: tuple[int, ...]) -> float:
    """The BS's own work in a round: every micro-batch of every UE, then its step."""
    st = StageTimes(
        scenario, Plan("c2p2sl", cut, micro_batches, (1.0 / scenario.num_ues,) * scenario.num_ues)
    )
    return sum(m * st.bs(scenario.batch_per_ue / m) for m in micro_batches) + st.bs_step()


def sync_per_round(scenario: Scenario, cut: int) -> float:
    """The client-model averaging (one UE at a time, whole band), spread over the rounds between two."""
    k = scenario.num_ues
    st = StageTimes(scenario, Plan("c2p2sl", cut, (1,) * k, (1.0 / k,) * k))
    total = sum(st.sync_control(ue) + 2 * st.sync_transfer(ue) + 3 * st.latency for ue in range(k))
    return total / scenario.rounds_per_sync


def round_time_bound(scenario: Scenario, plan: Plan) -> float:
    """The optimiser's objective: the closed-form round time of a C2P2SL plan."""
    plan.validate(scenario)
    ue_terms = [
        bound_terms(scenario, plan.cut, k, m).round_s(b)
        for k, (m, b) in enumerate(zip(plan.micro_batches, plan.uplink_shares, strict=True))
    ]
    return max(*ue_terms, bs_bound(scenario, plan.cut, plan.micro_batches)) + sync_per_round(
        scenario, plan.cut
    )
