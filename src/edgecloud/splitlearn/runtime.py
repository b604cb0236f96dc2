"""Real split training: one BS process and one process per UE, over gloo (C2P2SL Sec. II).

Each UE runs the blocks before the cut on its own data shard and sends activations (with labels)
up; the BS runs the rest, backpropagates and sends the cut-layer gradients down; the UE finishes
the backward pass. A *plan* (``latency.Plan``) says how:

* ``sequential``: the BS serves one UE at a time, whole batch, each holding the whole band —
  classic split learning with no overlap.
* ``c2p2sl``: every UE splits its batch into ``m_k`` micro-batches and streams them: UE forwards
  back to back, the uplink (at the UE's bandwidth share) carries one while the next is computed,
  the BS serves micro-batches from all UEs in arrival order, gradients stream back down. The BS
  and every UE accumulate gradients over micro-batches and step once per round, so the update
  is the full-batch update.

Every ``sync_every`` rounds (by default once per epoch) the BS averages the UEs' client-side
models (SplitFed-style), evaluates the averaged model on the test set while every UE waits for it
(the evaluation is taken off the clock), and sends the average back. All transfers are paced to
the wireless model's rates (``transport``). UEs are heterogeneous: a UE with ``slowdown`` s makes
each of its computations take s times the CPU time this host actually spent on it (it sleeps the
difference), which also keeps the emulation honest when other processes share the cores.

Membership and faults. gloo process groups have a fixed size and cannot lose or gain a member:
one dead rank poisons every collective. So there is no global group. A ``TCPStore`` held by the
launcher is the membership registry: a UE (re)joining bumps ``incarnation/<k>`` and opens a
two-rank gloo group with the BS under the prefix ``ue<k>/<incarnation>``; the BS notices the new
incarnation at the next round boundary and opens its side. A UE that dies closes its pair (the
BS's receive fails at once); a UE that hangs is dropped after ``ue_timeout_s`` without a message
while it still owes some. Either way the BS logs it, finishes the round with the others and
serves the UE again when it rejoins. Every process sets ``torch.set_num_threads(1)``.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from edgecloud.splitlearn.data import (
    Dataset,
    DataSplit,
    dataset_spec,
    load_split,
    rounds_per_epoch,
    shard_batch,
    ue_shard,
)
from edgecloud.splitlearn.latency import (
    CONTROL_ELEMENTS,
    LinkRates,
    Plan,
    UEConfig,
    link_rates,
    micro_batch_sizes,
)
from edgecloud.splitlearn.models import build_model, split_model
from edgecloud.splitlearn.sgd import MomentumSGD
from edgecloud.splitlearn.transport import HandOffs, PacedSender, hand_offs

log = logging.getLogger("edgecloud.splitlearn")

TAG_ACTIVATION, TAG_GRADIENT, TAG_CONTROL, TAG_PARAMETERS = 1, 2, 3, 4
SYNC_REQUEST = -1.0  # control value asking a UE for its client model
BS_RANK, UE_RANK = 0, 1


@dataclass(frozen=True)
class UEFault:
    """Fault injection: UE ``ue``'s first incarnation crashes (exits) or hangs in round ``round``,
    right after sending its first micro-batch."""

    ue: int
    round: int
    kind: Literal["crash", "hang"] = "crash"


@dataclass(frozen=True)
class TrainConfig:
    model: str
    plan: Plan
    ues: tuple[UEConfig, ...]
    bandwidth_hz: float
    batch_per_ue: int = 32
    epochs: int = 1
    max_rounds: int | None = None  # stop early (tests); None trains all epochs
    lr: float = 0.05
    momentum: float = 0.9
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"
    ue_timeout_s: float = 10.0
    faults: tuple[UEFault, ...] = ()
    restart_crashed_ues: bool = True
    await_rejoin_s: float = 0.0  # how long the BS holds a round for a dropped UE to come back (once per drop)
    dataset: str = "digits"
    syncs_per_epoch: int = 1  # client-model averagings (each followed by a test evaluation) per epoch
    lr_schedule: Literal["constant", "cosine"] = "constant"  # cosine: from lr to 0 over the run's rounds

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float64 if self.dtype == "float64" else torch.float32


@dataclass(frozen=True)
class Evaluation:
    """Test accuracy of the averaged model after round ``round`` (1-based count of rounds done)."""

    round: int
    time_s: float  # training clock at that point (evaluations are off the clock)
    accuracy: float


@dataclass(frozen=True)
class Progress:
    """What the BS reports while it trains (``train(on_progress=...)``)."""

    rounds_done: int
    rounds: int
    time_s: float
    accuracy: float | None = None  # set when this round ended with an evaluation


@dataclass
class ComputeTally:
    """Host CPU seconds of a process's computations, per (kind, micro-batch size): count and sum.

    Kinds: ``forward``, ``backward`` and ``step`` on a UE; ``serve`` (a micro-batch, from taking
    its activation off the queue to handing its gradient to the downlink) and ``step`` on the BS.
    """

    totals: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)

    def add(self, kind: str, size: int, cpu_s: float) -> None:
        count, total = self.totals.get((kind, size), (0, 0.0))
        self.totals[kind, size] = (count + 1, total + cpu_s)

    def mean_s(self, kind: str, size: int) -> float:
        count, total = self.totals[kind, size]
        return total / count

    def as_list(self) -> list[list[Any]]:
        return [[kind, size, count, total] for (kind, size), (count, total) in sorted(self.totals.items())]

    def to_json(self) -> str:
        return json.dumps(self.as_list())

    @classmethod
    def from_json(cls, text: str) -> ComputeTally:
        return cls({(kind, int(size)): (int(count), float(total)) for kind, size, count, total in json.loads(text)})


@dataclass
class TrainResult:
    time_s: float  # training clock from the BS's "start" to the end of the last round (syncs included)
    round_end_s: list[float]
    participants: list[tuple[int, ...]]  # UEs that contributed to each round
    accuracy: float
    events: list[str]
    parameters: dict[str, np.ndarray] = field(repr=False)
    evaluations: list[Evaluation] = field(default_factory=list)
    evaluation_s: float = 0.0  # wall time spent evaluating, kept off the training clock
    # Host CPU seconds each UE's last incarnation spent computing (before its slowdown).
    ue_compute_cpu_s: dict[int, float] = field(default_factory=dict)
    ue_compute_costs: dict[int, ComputeTally] = field(default_factory=dict)  # the same per kind and size
    bs_compute_costs: ComputeTally = field(default_factory=ComputeTally)
    # The BS's computations in wall-clock seconds (CPU time plus time its thread waited for a core).
    bs_compute_wall_s: ComputeTally = field(default_factory=ComputeTally)
    # The BS's side of every link, per UE: its downlink's ``PacedSender.log`` and its receive log
    # (tag, asked_at, held_at); ``train`` lays them beside the UEs' own logs into ``hand_offs``.
    message_logs: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    hand_offs: HandOffs = field(default_factory=HandOffs)  # what handing messages over cost in this run

    def time_to(self, target: float) -> Evaluation | None:
        """The first evaluation at or above ``target`` accuracy, if any."""
        return next((e for e in self.evaluations if e.accuracy >= target), None)


@dataclass(frozen=True)
class _RunShape:
    """What every process derives identically from the config."""

    rounds: int
    per_epoch: int
    sync_every: int
    activation_shape: tuple[int, ...]
    activation_width: int


def sync_period(per_epoch: int, syncs_per_epoch: int) -> int:
    """Rounds between two client-model averagings."""
    if syncs_per_epoch < 1:
        raise ValueError(f"syncs_per_epoch must be >= 1, got {syncs_per_epoch}")
    return max(1, per_epoch // syncs_per_epoch)


def _model(config: TrainConfig) -> nn.Sequential:
    return build_model(config.model, config.seed, config.torch_dtype, config.dataset)


def _run_shape(config: TrainConfig, train_size: int) -> _RunShape:
    per_epoch = rounds_per_epoch(train_size, len(config.ues), config.batch_per_ue)
    rounds = per_epoch * config.epochs
    if config.max_rounds is not None:
        rounds = min(rounds, config.max_rounds)
    ue_part, _ = split_model(_model(config), config.plan.cut)
    with torch.no_grad():
        out = ue_part(torch.zeros(1, *dataset_spec(config.dataset).input_shape, dtype=config.torch_dtype))
    sync_every = sync_period(per_epoch, config.syncs_per_epoch)
    return _RunShape(rounds, per_epoch, sync_every, tuple(out.shape[1:]), out[0].numel())


def learning_rate(config: TrainConfig, shape: _RunShape, r: int) -> float:
    """The step size of round ``r``; BS and UEs compute it alike."""
    if config.lr_schedule == "cosine":
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * r / shape.rounds))
    return config.lr


def _is_sync_round(shape: _RunShape, r: int) -> bool:
    return (r + 1) % shape.sync_every == 0 or r + 1 == shape.rounds


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in module.parameters()])


def _load_flat(module: nn.Module, flat: torch.Tensor) -> None:
    offset = 0
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()


class _Device:
    """A device ``factor`` times slower than this host, on its own timeline.

    Each computation takes ``factor`` x the CPU time this host spent on it (CPU time, so time
    other processes hold the shared cores is not multiplied) and starts when the device is free
    and its input has arrived — on the device's timeline, not when this process happens to wake:
    a computation that follows another starts when the previous one *should* have ended. The
    process sleeps until the computation's end on that timeline, so time spent waiting for a core
    or waking late from a sleep (the emulated UEs share this host's cores; real devices would
    not) is absorbed by the next sleep instead of accumulating, as long as the slack of
    ``factor - 1`` x the CPU time covers it. Messages are stamped with the same timeline.
    """

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.cpu_s = 0.0  # host CPU time of all computations so far, reported to the launcher
        self.costs = ComputeTally()  # the same, per kind of computation and micro-batch size
        self.free_at = time.monotonic()

    def input_at(self, at: float) -> None:
        """An input the next computation needs arrived at ``at``."""
        self.free_at = max(self.free_at, at)

    @contextmanager
    def computing(self, kind: str, size: int) -> Iterator[None]:
        start = time.thread_time()
        yield
        used = time.thread_time() - start
        self.cpu_s += used
        self.costs.add(kind, size, used)
        self.free_at += self.factor * used
        remaining = self.free_at - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)


def _connect(store: dist.Store, ue: int, incarnation: int, rank: int, timeout_s: float) -> dist.ProcessGroup:
    return dist.ProcessGroupGloo(
        dist.PrefixStore(f"ue{ue}/{incarnation}", store), rank, 2, datetime.timedelta(seconds=timeout_s)
    )


def _link_rates(config: TrainConfig) -> LinkRates:
    return link_rates(config.ues, config.bandwidth_hz, config.plan)


def _warm_up(module: nn.Module, x: torch.Tensor, sizes: list[int], loss: nn.Module | None = None) -> None:
    """Run each micro-batch size through the exact operations of training, once, before joining.

    The first call of an operation in a fresh process pays one-off set-up (oneDNN primitives,
    lazy imports: a backward with an explicit gradient costs ~200 ms the first time); a UE's
    slowdown would multiply it, and it is no part of the training time of a long-running device.
    """
    for size in sorted(set(sizes)):
        sample = x[:size].detach().clone().requires_grad_(loss is not None)
        out = module(sample)
        if loss is None:
            out.backward(torch.ones_like(out))
            torch.cat([out.detach().reshape(size, -1), torch.zeros(size, 1, dtype=out.dtype)], dim=1)
        else:
            loss(out, torch.zeros(size, dtype=torch.long)).backward()
    MomentumSGD(module.parameters(), lr=0.0, momentum=0.9).step()  # lr 0: exercises the kernel only
    module.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------------------------- UE


def _loopback_store(port: int) -> dist.Store:
    return dist.TCPStore("127.0.0.1", port, is_master=False, timeout=datetime.timedelta(seconds=60))


def _ue_process(config: TrainConfig, shard: Dataset, port: int, ue: int) -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s UE{ue} %(message)s")
    run_ue(config, shard, lambda: _loopback_store(port), ue)


def run_ue(config: TrainConfig, shard: Dataset, connect: Callable[[], dist.Store], ue: int) -> None:
    """UE ``ue``'s whole life: warm up, join through the store ``connect`` opens, train, exit.

    ``shard`` is this UE's part of the training set (``data.ue_shard``). Never returns: the
    process exits without gloo's teardown, whose peers may already be gone.
    """
    shape = _run_shape(config, len(shard) * len(config.ues))
    rates = _link_rates(config)
    client, _ = split_model(_model(config), config.plan.cut)
    optimiser = MomentumSGD(client.parameters(), lr=config.lr, momentum=config.momentum)
    device = _Device(config.ues[ue].slowdown)
    sequential = config.plan.schedule == "sequential"
    sizes = micro_batch_sizes(config.batch_per_ue, config.plan.micro_batches[ue])
    _warm_up(client, shard.x, sizes)
    # Join only when ready to compute: the BS starts the clock once every UE has joined.
    store = connect()
    incarnation = store.add(f"incarnation/{ue}", 1)
    group = _connect(store, ue, incarnation, UE_RANK, timeout_s=120.0)
    uplink = PacedSender(group, BS_RANK, name=f"ue{ue}-uplink")
    received: list[tuple[int, float, float]] = []  # (tag, asked_at, held_at): transport.hand_offs

    def recv(elements: int, tag: int) -> torch.Tensor:
        """A message from the BS; what comes next on the device cannot start before it arrived."""
        buffer = torch.empty(elements, dtype=config.torch_dtype)
        # The emulated device asks when its timeline reaches this receive (the model's "ready");
        # under load its process wakes from the last computation's sleep later than that, and what
        # the device loses to it counts from the timeline, like the hand-off itself.
        asked = min(device.free_at, time.monotonic())
        group.recv([buffer], BS_RANK, tag).wait()
        held = time.monotonic()
        received.append((tag, asked, held))
        device.input_at(held)
        return buffer

    def send(tensor: torch.Tensor, tag: int, rate_bps: float) -> None:
        uplink.send(tensor, tag, rate_bps, enqueued_at=device.free_at)

    params = recv(sum(p.numel() for p in client.parameters()), TAG_PARAMETERS)
    _load_flat(client, params)
    first_round = int(recv(CONTROL_ELEMENTS, TAG_CONTROL).item())
    fault = next((f for f in config.faults if f.ue == ue and incarnation == 1), None)
    for r in range(first_round, shape.rounds):
        if sequential:
            recv(CONTROL_ELEMENTS, TAG_CONTROL)
        batch = shard_batch(shard, config.batch_per_ue, r)
        outputs = []
        for i, (x, y) in enumerate(
            zip(torch.split(batch.x, sizes), torch.split(batch.y, sizes), strict=True)
        ):
            with device.computing("forward", len(x)):
                out = client(x)
                message = torch.cat([out.detach().reshape(len(x), -1), y.to(out.dtype).unsqueeze(1)], dim=1)
            send(message, TAG_ACTIVATION, rates.uplink_bps[ue])
            outputs.append(out)
            if fault is not None and fault.round == r and i == 0:
                uplink.flush()
                log.info("fault injection: %s in round %d", fault.kind, r)
                if fault.kind == "crash":
                    os._exit(17)
                time.sleep(3600)
        for out in outputs:
            gradient = recv(out.numel(), TAG_GRADIENT).view_as(out)
            with device.computing("backward", len(out)):
                out.backward(gradient)
        with device.computing("step", config.batch_per_ue):
            optimiser.lr = learning_rate(config, shape, r)
            optimiser.step()
            optimiser.zero_grad()
        if sequential:
            send(torch.zeros(CONTROL_ELEMENTS, dtype=config.torch_dtype), TAG_CONTROL, rates.uplink_bps[ue])
        if _is_sync_round(shape, r):
            recv(CONTROL_ELEMENTS, TAG_CONTROL)
            send(_flat(client), TAG_PARAMETERS, rates.full_bps[ue])
            _load_flat(client, recv(sum(p.numel() for p in client.parameters()), TAG_PARAMETERS))
    uplink.flush()
    store.set(f"compute_cpu_s/{ue}", repr(device.cpu_s))
    store.set(f"compute_costs/{ue}", device.costs.to_json())
    store.set(f"sent_log/{ue}", _log_bytes(uplink.log))
    store.set(f"received_log/{ue}", _log_bytes(received))
    os._exit(0)  # skip gloo teardown: the BS may already be gone


def _log_bytes(log: list[tuple[int, float, float]] | list[list[float]]) -> bytes:
    return np.asarray(log, dtype=np.float64).reshape(-1, 3).tobytes()


def _log_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float64).reshape(-1, 3)


# --------------------------------------------------------------------------------------------- BS


@dataclass
class _Event:
    ue: int
    incarnation: int
    kind: Literal["activation", "done", "parameters", "gone"]
    round: int
    tensor: torch.Tensor | None = None
    error: str = ""
    received_at: float = 0.0  # when the receive thread held it
    log_index: int = -1  # its row in the session's receive log


def _expected_uplink(
    config: TrainConfig, shape: _RunShape, ue: int, first_round: int, parameter_elements: int
) -> Iterator[tuple[str, int, int, int]]:
    """(kind, round, elements, tag) of every message UE ``ue`` will send, in order."""
    sizes = micro_batch_sizes(config.batch_per_ue, config.plan.micro_batches[ue])
    for r in range(first_round, shape.rounds):
        for size in sizes:
            yield "activation", r, size * (shape.activation_width + 1), TAG_ACTIVATION
        if config.plan.schedule == "sequential":
            yield "done", r, CONTROL_ELEMENTS, TAG_CONTROL
        if _is_sync_round(shape, r):
            yield "parameters", r, parameter_elements, TAG_PARAMETERS


@dataclass
class _Session:
    ue: int
    incarnation: int
    group: dist.ProcessGroup
    downlink: PacedSender
    # (tag, asked_at, held_at) of every uplink message: asked by the receive thread, held by the
    # BS's main thread (NaN when that thread was busy when the message came; transport.hand_offs).
    received: list[list[float]] = field(default_factory=list)


class _BaseStation:
    def __init__(
        self,
        config: TrainConfig,
        test: Dataset,
        train_size: int,
        store: dist.Store,
        progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.test = test
        self.progress = progress
        self.shape = _run_shape(config, train_size)
        self.rates = _link_rates(config)
        self.model = _model(config)
        self.client, self.server = split_model(self.model, config.plan.cut)
        self.client_parameters = _flat(self.client)
        self.optimiser = MomentumSGD(self.server.parameters(), lr=config.lr, momentum=config.momentum)
        self.loss = nn.CrossEntropyLoss(reduction="sum")
        self.sessions: dict[int, _Session] = {}
        self.retired: list[_Session] = []  # dead groups are kept: destroying one with pending work can block
        self.known_incarnation = dict.fromkeys(range(len(config.ues)), 0)
        self.awaiting_rejoin: dict[int, float] = {}
        self.events: queue.Queue[_Event] = queue.Queue()
        self.stash: list[_Event] = []
        with torch.no_grad():
            activations = self.client(test.x[: config.batch_per_ue])
        all_sizes = [
            size for m in config.plan.micro_batches for size in micro_batch_sizes(config.batch_per_ue, m)
        ]
        _warm_up(self.server, activations, all_sizes, self.loss)
        self.log: list[str] = []
        self.t0 = 0.0
        self.paused_s = 0.0  # evaluation time, kept off the training clock
        self.evaluations: list[Evaluation] = []
        self.costs = ComputeTally()  # host CPU of the BS's computations, per kind and size
        self.walls = ComputeTally()  # the same in wall-clock time

    def clock(self) -> float:
        """Training time so far: wall time since "start" less the evaluations."""
        return time.monotonic() - self.t0 - self.paused_s if self.t0 else 0.0

    def note(self, message: str) -> None:
        stamp = self.clock()
        self.log.append(f"{stamp:8.3f}s {message}")
        log.info(message)

    # membership ---------------------------------------------------------------------------

    def _join(self, ue: int, incarnation: int, first_round: int) -> bool:
        try:
            group = _connect(
                self.store, ue, incarnation, BS_RANK, timeout_s=max(30.0, self.config.ue_timeout_s)
            )
        except RuntimeError as exc:
            self.note(f"UE{ue} incarnation {incarnation} failed to connect: {exc}")
            self.known_incarnation[ue] = incarnation
            return False
        self.known_incarnation[ue] = incarnation
        self.awaiting_rejoin.pop(ue, None)
        session = _Session(ue, incarnation, group, PacedSender(group, UE_RANK, name=f"bs-downlink-{ue}"))
        self.sessions[ue] = session
        threading.Thread(target=self._receive, args=(session, first_round), daemon=True).start()
        # The welcome (current client model, then the round to start at) is part of joining.
        session.downlink.send(self.client_parameters.clone(), TAG_PARAMETERS, self.rates.full_bps[ue])
        session.downlink.send(self._control(first_round), TAG_CONTROL, self.rates.downlink_bps[ue])
        return True

    def _control(self, value: float) -> torch.Tensor:
        return torch.full((CONTROL_ELEMENTS,), value, dtype=self.config.torch_dtype)

    def _receive(self, session: _Session, first_round: int) -> None:
        expected = _expected_uplink(
            self.config, self.shape, session.ue, first_round, self.client_parameters.numel()
        )
        for kind, r, elements, tag in expected:
            buffer = torch.empty(elements, dtype=self.config.torch_dtype)
            asked = time.monotonic()
            try:
                session.group.recv([buffer], UE_RANK, tag).wait()
            except RuntimeError as exc:
                self.events.put(
                    _Event(session.ue, session.incarnation, "gone", r, error=str(exc).splitlines()[0])
                )
                return
            session.received.append([tag, asked, math.nan])
            held, index = time.monotonic(), len(session.received) - 1
            self.events.put(
                _Event(session.ue, session.incarnation, kind, r, buffer, received_at=held, log_index=index)  # type: ignore[arg-type]
            )

    def _drop(self, ue: int, reason: str) -> None:
        session = self.sessions.pop(ue, None)
        if session is None:
            return
        self.retired.append(session)
        self.awaiting_rejoin[ue] = self.config.await_rejoin_s
        self.note(f"UE{ue} dropped: {reason}")

    def _accept_rejoins(self, r: int) -> None:
        deadline = time.monotonic() + max(self.awaiting_rejoin.values(), default=0.0)
        while True:
            for ue in range(len(self.config.ues)):
                current = self.store.add(f"incarnation/{ue}", 0)
                if (
                    ue not in self.sessions
                    and current > self.known_incarnation[ue]
                    and self._join(ue, current, r)
                ):
                    self.note(f"UE{ue} rejoined (incarnation {current}), served from round {r}")
            waiting = [ue for ue in self.awaiting_rejoin if self.awaiting_rejoin[ue] > 0]
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        for ue in self.awaiting_rejoin:
            self.awaiting_rejoin[ue] = 0.0  # the grace period is granted once per drop

    # events -------------------------------------------------------------------------------

    def _live(self, event: _Event) -> bool:
        session = self.sessions.get(event.ue)
        return session is not None and session.incarnation == event.incarnation

    def _next_event(self, wanted: Callable[[_Event], bool]) -> _Event | None:
        """The next wanted event (or a live UE's failure); None after ``ue_timeout_s`` of silence.

        Events that arrive early (a fast UE's next round) wait in the stash, in arrival order.
        """
        self.stash = [e for e in self.stash if self._live(e)]
        for i, event in enumerate(self.stash):
            if event.kind == "gone" or wanted(event):
                return self.stash.pop(i)
        while True:
            asked = time.monotonic()
            try:
                event = self.events.get(timeout=self.config.ue_timeout_s)
            except queue.Empty:
                return None
            if not self._live(event):
                continue
            if event.log_index >= 0 and event.received_at >= asked:
                # This thread was waiting when the message came: the message's hand-off ends now.
                self.sessions[event.ue].received[event.log_index][2] = time.monotonic()
            if event.kind == "gone" or wanted(event):
                return event
            self.stash.append(event)

    def _wait_for(self, r: int, owed: dict[int, int], kind: str, contributed: set[int]) -> list[_Event]:
        """Serve events until every UE in ``owed`` has sent its count of ``kind`` messages of round ``r``."""
        received = []
        while any(owed.values()):
            event = self._next_event(lambda e: e.kind == kind and e.round == r and owed.get(e.ue, 0) > 0)
            if event is None:
                for ue in [ue for ue, n in owed.items() if n > 0]:
                    self._drop(ue, f"no message for {self.config.ue_timeout_s:.1f}s in round {r}")
                    owed[ue] = 0
                continue
            if event.kind == "gone":
                self._drop(event.ue, f"{event.error} (round {r})")
                owed[event.ue] = 0
                continue
            owed[event.ue] -= 1
            if kind == "activation":
                started, wall = time.thread_time(), time.monotonic()
                size = self._serve_micro_batch(event)
                self.costs.add("serve", size, time.thread_time() - started)
                self.walls.add("serve", size, time.monotonic() - wall)
                contributed.add(event.ue)
            received.append(event)
        return received

    def _serve_micro_batch(self, event: _Event) -> int:
        assert event.tensor is not None
        message = event.tensor.view(-1, self.shape.activation_width + 1)
        activation = message[:, :-1].reshape(-1, *self.shape.activation_shape).requires_grad_(True)
        labels = message[:, -1].round().long()
        # The UE gets the gradient of its own mean loss; the server's parameters accumulate the
        # same and are divided by the number of contributing UEs before the step.
        loss = self.loss(self.server(activation), labels) / self.config.batch_per_ue
        loss.backward()
        assert activation.grad is not None
        session = self.sessions[event.ue]
        session.downlink.send(activation.grad.reshape(-1), TAG_GRADIENT, self.rates.downlink_bps[event.ue])
        return len(labels)

    # rounds -------------------------------------------------------------------------------

    def _round(self, r: int) -> tuple[int, ...]:
        contributed: set[int] = set()
        micro = self.config.plan.micro_batches
        if self.config.plan.schedule == "sequential":
            for ue in sorted(self.sessions):
                if ue not in self.sessions:
                    continue
                self.sessions[ue].downlink.send(self._control(r), TAG_CONTROL, self.rates.downlink_bps[ue])
                self._wait_for(r, {ue: micro[ue]}, "activation", contributed)
                self._wait_for(r, {ue: 1} if ue in self.sessions else {}, "done", contributed)
        else:
            self._wait_for(r, {ue: micro[ue] for ue in self.sessions}, "activation", contributed)
        if contributed:
            for p in self.server.parameters():
                if p.grad is not None:
                    p.grad /= len(contributed)
            started = time.thread_time()
            self.optimiser.lr = learning_rate(self.config, self.shape, r)
            self.optimiser.step()
            self.optimiser.zero_grad()
            self.costs.add("step", self.config.batch_per_ue, time.thread_time() - started)
        else:
            self.optimiser.zero_grad()
        if _is_sync_round(self.shape, r):
            self._synchronise(r)
        return tuple(sorted(contributed))

    def _synchronise(self, r: int) -> None:
        """Collect client models one UE at a time, average, evaluate, send back one at a time."""
        models = []
        for ue in sorted(self.sessions):
            if ue not in self.sessions:
                continue
            self.sessions[ue].downlink.send(self._control(SYNC_REQUEST), TAG_CONTROL, self.rates.full_bps[ue])
            models += [e.tensor for e in self._wait_for(r, {ue: 1}, "parameters", set())]
        if models:
            self.client_parameters = torch.stack(models).mean(dim=0)
        # Every UE now waits for the average and every link is idle, so stopping the clock here
        # takes exactly the evaluation off it.
        started = time.monotonic()
        at = self.clock()
        self.evaluations.append(Evaluation(r + 1, at, self._accuracy()))
        self.paused_s += time.monotonic() - started
        for ue in sorted(self.sessions):
            session = self.sessions[ue]
            session.downlink.send(self.client_parameters, TAG_PARAMETERS, self.rates.full_bps[ue])
            session.downlink.flush()

    def run(self, initial_wait_s: float) -> TrainResult:
        deadline = time.monotonic() + initial_wait_s
        while len(self.sessions) < len(self.config.ues) and time.monotonic() < deadline:
            for ue in range(len(self.config.ues)):
                current = self.store.add(f"incarnation/{ue}", 0)
                if ue not in self.sessions and current > self.known_incarnation[ue]:
                    self._join(ue, current, 0)
            time.sleep(0.01)
        if not self.sessions:
            raise RuntimeError(f"no UE joined within {initial_wait_s}s")
        # The welcome carries the client model: wait for it so it does not count as training.
        for session in self.sessions.values():
            session.downlink.flush()
        self.t0 = time.monotonic()
        round_end, participants = [], []
        report_every = max(1, self.shape.rounds // 200)
        for r in range(self.shape.rounds):
            if r > 0:
                self._accept_rejoins(r)
            if not self.sessions:
                self.note(f"round {r}: no UE connected")
            evaluations = len(self.evaluations)
            participants.append(self._round(r))
            for session in self.sessions.values():
                session.downlink.flush()
            round_end.append(self.clock())
            evaluated = len(self.evaluations) > evaluations
            if self.progress is not None and (evaluated or (r + 1) % report_every == 0):
                accuracy = self.evaluations[-1].accuracy if evaluated else None
                self.progress(Progress(r + 1, self.shape.rounds, round_end[-1], accuracy))
        return TrainResult(
            time_s=round_end[-1],
            round_end_s=round_end,
            participants=participants,
            accuracy=self.evaluations[-1].accuracy,
            events=self.log,
            parameters={n: p.detach().numpy().copy() for n, p in self._final_model().named_parameters()},
            evaluations=self.evaluations,
            evaluation_s=self.paused_s,
            bs_compute_costs=self.costs,
            bs_compute_wall_s=self.walls,
            message_logs={
                ue: (_log_array(_log_bytes(s.downlink.log)), _log_array(_log_bytes(s.received)))
                for ue, s in self.sessions.items()
            },
        )

    def _final_model(self) -> nn.Sequential:
        _load_flat(self.client, self.client_parameters)
        return self.model

    def _accuracy(self) -> float:
        model = self._final_model()
        # Every other process waits for this (off the clock), so it may use every core.
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)
        try:
            with torch.no_grad():
                predictions = torch.cat([model(x).argmax(dim=1) for x in torch.split(self.test.x, 2000)])
        finally:
            torch.set_num_threads(threads)
        return float((predictions == self.test.y).double().mean())


def run_bs(
    config: TrainConfig,
    test: Dataset,
    train_size: int,
    store: dist.Store,
    progress: Callable[[Progress], None] | None = None,
    initial_wait_s: float = 120.0,
) -> TrainResult:
    """The BS's side of a run: wait for the UEs to join through ``store``, train, return the result."""
    return _BaseStation(config, test, train_size, store, progress).run(initial_wait_s)


def _bs_process(
    config: TrainConfig, test: Dataset, train_size: int, port: int, results: multiprocessing.Queue
) -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s BS %(message)s")
    try:
        result = run_bs(config, test, train_size, _loopback_store(port), lambda p: results.put(("progress", p)))
        results.put(("ok", result))
    except Exception as exc:  # report, never hang the launcher
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    results.close()
    results.join_thread()
    os._exit(0)  # skip gloo teardown of groups whose peers may be dead


# --------------------------------------------------------------------------------------- launcher


def _validate(config: TrainConfig) -> None:
    plan, k = config.plan, len(config.ues)
    n_blocks = len(build_model(config.model, config.seed, dataset=config.dataset))
    if not 1 <= plan.cut < n_blocks:
        raise ValueError(f"plan.cut must be in 1..{n_blocks - 1} for model {config.model!r}, got {plan.cut}")
    if len(plan.micro_batches) != k or len(plan.uplink_shares) != k:
        raise ValueError(f"plan needs one micro-batch count and one uplink share per UE ({k})")
    if any(not 1 <= m <= config.batch_per_ue for m in plan.micro_batches):
        raise ValueError(f"plan.micro_batches must be in 1..{config.batch_per_ue}, got {plan.micro_batches}")
    if any(b <= 0 for b in plan.uplink_shares) or sum(plan.uplink_shares) > 1 + 1e-9:
        raise ValueError(f"plan.uplink_shares must be > 0 and sum to <= 1, got {plan.uplink_shares}")
    if config.epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {config.epochs}")
    if config.ue_timeout_s <= 0:
        raise ValueError(f"ue_timeout_s must be > 0, got {config.ue_timeout_s}")
    sync_period(1, config.syncs_per_epoch)
    if config.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {config.lr_schedule!r}")


def train(
    config: TrainConfig,
    timeout_s: float = 900.0,
    on_progress: Callable[[Progress], None] | None = None,
    data: DataSplit | None = None,
) -> TrainResult:
    """Run one split-training job: a BS process and one process per UE, supervised here.

    The launcher owns the membership store and restarts UEs that crash (when
    ``restart_crashed_ues``), which is how a UE "rejoins". ``data`` (loaded here when not given)
    must be ``load_split(config.dataset, config.seed, ...)``; each UE process gets only its shard
    and the BS only the test set.
    """
    _validate(config)
    if data is None:
        data = load_split(config.dataset, config.seed, config.torch_dtype)
    num_ues = len(config.ues)
    shards = [ue_shard(data.train, num_ues, k) for k in range(num_ues)]
    store = dist.TCPStore(
        "127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=60)
    )
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()
    bs = ctx.Process(
        target=_bs_process, args=(config, data.test, len(data.train), store.port, results), daemon=True
    )
    bs.start()
    ues = {
        k: ctx.Process(target=_ue_process, args=(config, shards[k], store.port, k), daemon=True)
        for k in range(num_ues)
    }
    for process in ues.values():
        process.start()
    restarts: list[str] = []
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                status, payload = results.get(timeout=0.05)
                if status != "progress":
                    break
                if on_progress is not None:
                    on_progress(payload)
                continue
            except queue.Empty:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"training did not finish within {timeout_s}s")
            if not bs.is_alive():
                raise RuntimeError(f"BS process exited with code {bs.exitcode}")
            for k, process in list(ues.items()):
                if process.exitcode not in (None, 0) and config.restart_crashed_ues:
                    restarts.append(f"launcher: UE{k} exited with code {process.exitcode}; restarted")
                    ues[k] = ctx.Process(target=_ue_process, args=(config, shards[k], store.port, k), daemon=True)
                    ues[k].start()
    finally:
        for process in [bs, *ues.values()]:
            process.join(timeout=2.0)
            if process.is_alive():  # a hung UE (fault injection) or a failed run
                process.kill()
                process.join()
    if status != "ok":
        raise RuntimeError(f"BS failed: {payload}")
    result: TrainResult = payload
    result.events = restarts + result.events
    for k in range(len(config.ues)):
        key = f"compute_cpu_s/{k}"
        if store.check([key]):
            result.ue_compute_cpu_s[k] = float(store.get(key).decode())
        if store.check([f"compute_costs/{k}"]):
            result.ue_compute_costs[k] = ComputeTally.from_json(store.get(f"compute_costs/{k}").decode())
        if k in result.message_logs and store.check([f"sent_log/{k}", f"received_log/{k}"]):
            # Every process here shares this host's monotonic clock, so the two ends' logs compare.
            bs_sent, bs_received = result.message_logs[k]
            ue_sent, ue_received = _log_array(store.get(f"sent_log/{k}")), _log_array(store.get(f"received_log/{k}"))
            result.hand_offs += hand_offs(bs_sent, ue_received, late_tags={TAG_GRADIENT})
            result.hand_offs += hand_offs(ue_sent, bs_received)
    return result
