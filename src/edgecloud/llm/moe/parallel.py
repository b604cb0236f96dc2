"""Expert parallelism: a model's routed experts spread over several processes (EP ranks).

Design (docs/moe.md, "Expert parallelism"): every rank runs the dense parts (embeddings, attention,
norms, shared experts, LM head) on the same batch and holds its own KV cache, and each MoE layer
computes only the (token, expert) pairs whose replica lives on that rank; the ranks then sum the
layer's ``[tokens, k, hidden]`` output buffer with one all-reduce, in which every entry was written
by exactly one rank, so the sum is exact and every rank continues with the same numbers. Rank 0
holds the engine core (scheduler, KV manager, sampler); before each step it sends the step's inputs
(token ids, positions, block tables) to the other ranks, which run the same forward pass without
sampling. Placements (``ExpertRuntime.apply``) and KV blocks imported into rank 0 are sent the same
way, so all ranks change placement at the same step and hold the same cache.

Why all-reduce and not all-to-all dispatch: with the dense parts replicated, each rank already has
every token, so dispatch needs no communication and the combine is one collective of
``tokens x k x hidden`` values per MoE layer; an all-to-all design would also split attention by
data parallelism (each rank its own requests), which is what large deployments do to save the
replicated attention compute, at the cost of a dispatch and a combine per layer and of scheduling
that keeps the ranks' batches equal. On the CPUs measured here the replicated dense part costs the
same on every rank, so the step time still follows the busiest rank's expert work, which is what
placement changes (measured in ``bench moe``).

Processes talk through a ``torch.distributed`` process group of their own (``ProcessGroupGloo`` on
CPU; ``ProcessGroupNCCL`` is the GPU equivalent, one device per rank), not the global default group,
so one process can run several expert-parallel engines one after another, and the processes of ranks
1..N-1 (``ExpertParallelRanks``) can serve one engine after another without being started again.
"""

from __future__ import annotations

import datetime
import logging
import multiprocessing as mp
import pickle
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from edgecloud.llm.config import EngineConfig
from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.moe.placement import Placement
from edgecloud.llm.moe.rebalance import OmniRebalancer
from edgecloud.llm.moe.runtime import ExpertRuntime
from edgecloud.llm.scheduler import SampledTokens, ScheduledRequest, SchedulerOutput

log = logging.getLogger(__name__)


class Collective:
    """One expert-parallel group: all-reduce of MoE outputs, broadcast of rank 0's messages."""

    def __init__(self, rank: int, world_size: int, port: int, timeout_s: float = 300.0,
                 store: dist.TCPStore | None = None) -> None:
        """``store``: rank 0's store, made before the other ranks start (``master_store``)."""
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank = rank
        self.world_size = world_size
        self.store = store or dist.TCPStore("127.0.0.1", port, world_size, rank == 0, timeout=timeout)
        self.group = dist.ProcessGroupGloo(self.store, rank, world_size, timeout)

    def all_reduce(self, tensor: torch.Tensor) -> None:
        self.group.allreduce([tensor]).wait()

    def send(self, message: Any) -> None:
        """Rank 0: one message to every other rank."""
        payload = torch.frombuffer(bytearray(pickle.dumps(message)), dtype=torch.uint8)
        self.group.broadcast(torch.tensor([payload.numel()], dtype=torch.int64), 0).wait()
        self.group.broadcast(payload, 0).wait()

    def receive(self) -> Any:
        size = torch.zeros(1, dtype=torch.int64)
        self.group.broadcast(size, 0).wait()
        payload = torch.empty(int(size.item()), dtype=torch.uint8)
        self.group.broadcast(payload, 0).wait()
        return pickle.loads(payload.numpy().tobytes())


@dataclass
class _Window:
    """The token ids a step needs of a request on a worker: positions [start, start + n)."""

    start: int
    ids: list[int]

    def __getitem__(self, index: slice) -> list[int]:
        return self.ids[index.start - self.start : index.stop - self.start]


@dataclass
class _RemoteRequest:
    """What the runner reads of a request, on a rank that does not schedule it (never sampled)."""

    request_id: str
    num_computed_tokens: int
    all_token_ids: _Window
    block_tables: list[list[int]]
    num_tokens: int = field(init=False)

    def __post_init__(self) -> None:
        self.num_tokens = self.all_token_ids.start + len(self.all_token_ids.ids) + 1  # "not the last token"


def _step_message(plan: SchedulerOutput) -> list[tuple[str, int, list[int], list[list[int]]]]:
    rows = []
    for s in plan.scheduled:
        req, start = s.request, s.request.num_computed_tokens
        rows.append((req.request_id, start, req.all_token_ids[start : start + s.num_new_tokens], req.block_tables))
    return rows


def _remote_plan(rows: list[tuple[str, int, list[int], list[list[int]]]]) -> SchedulerOutput:
    return SchedulerOutput(scheduled=[
        ScheduledRequest(_RemoteRequest(rid, start, _Window(start, ids), tables), len(ids))  # type: ignore[arg-type]
        for rid, start, ids, tables in rows
    ])


def _worker(rank: int, world_size: int, port: int, threads: int, timeout_s: float) -> None:
    """An EP rank other than 0: joins the group, then serves one model after another (a ``load``
    message each) until ``stop``."""
    torch.set_num_threads(threads)
    collective = Collective(rank, world_size, port, timeout_s)
    while True:
        kind, body = collective.receive()
        if kind == "stop":
            return
        if kind != "load":
            raise RuntimeError(f"EP rank {rank}: expected a model to load, got {kind!r}")
        if not _serve(rank, collective, *body):
            return


def _serve(rank: int, collective: Collective, config: EngineConfig, placement: np.ndarray) -> bool:
    """Runs rank 0's steps on one model until ``detach`` (True: another model may follow) or
    ``stop`` (False)."""
    from edgecloud.llm.engine_core import EngineCore
    from edgecloud.llm.model_source import resolve_model

    core = EngineCore(config, resolve_model(config.model))
    runner = core.executor
    runtime: ExpertRuntime = runner.moe  # type: ignore[attr-defined]
    runtime.join_group(rank, collective, Placement(placement, collective.world_size, runtime.moe.num_experts))
    collective.all_reduce(torch.ones(1))  # ready
    while True:
        kind, body = collective.receive()
        if kind == "step":
            runner.execute(_remote_plan(body))  # type: ignore[attr-defined]
        elif kind == "placement":
            table, live = body
            runtime.apply(Placement(table, collective.world_size, runtime.moe.num_experts), live=live)
        elif kind == "write_blocks":
            runner.write_blocks(*body)  # type: ignore[attr-defined]
        elif kind == "detach":
            return True
        elif kind == "stop":
            return False


class ExpertParallelRanks:
    """EP ranks 1..N-1: processes started once, each with ``threads`` torch threads, that serve the
    engine ``attach`` gives them, then the next one (starting a process costs seconds: an import of
    torch and a process group; loading a small model costs less)."""

    def __init__(self, world_size: int, threads: int = 1, timeout_s: float = 120.0) -> None:
        if world_size < 2:
            raise InvalidRequestError(f"world_size must be >= 2 for other ranks, got {world_size}", "world_size")
        self.world_size = world_size
        self.threads = threads
        # The store listens on a port the kernel picks, before the ranks start: no other process can
        # take the port between choosing it and binding it.
        store = dist.TCPStore("127.0.0.1", 0, world_size, True, timeout=datetime.timedelta(seconds=timeout_s),
                              wait_for_workers=False)
        port = store.port
        # Forked from a server process that has imported torch and the engine once (an import of
        # torch costs seconds a process); the server has run nothing, so no thread pool is forked.
        # torch._dynamo too: building the model on the meta device imports it (torch.arange goes
        # through torch._refs), seconds more per process.
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "torch.distributed", "torch._dynamo", "edgecloud.llm.engine_core"])
        self.processes = [ctx.Process(target=_worker, args=(rank, world_size, port, threads, timeout_s), daemon=True)
                          for rank in range(1, world_size)]
        self.collective: Collective | None = None
        for process in self.processes:
            process.start()
        try:
            self.collective = Collective(0, world_size, port, timeout_s, store)
        except RuntimeError as error:
            self.close()
            raise RuntimeError(f"expert-parallel ranks 1..{world_size - 1} did not start (exit codes "
                               f"{[p.exitcode for p in self.processes]}): {error}") from None
        self.attached = False

    def close(self) -> None:
        """Stops the processes (killing those that do not stop within 30 s)."""
        if self.collective is not None and all(p.is_alive() for p in self.processes):
            try:
                self.collective.send(("stop", None))
            except RuntimeError as error:  # a rank died: the others time out of the broadcast
                log.warning("EP ranks: stop not delivered: %s", error)
        self.collective = None
        for process in self.processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()


class MoEExecutor:
    """Rank 0's executor for an MoE model: the model runner, the other EP ranks (none with
    ``world_size`` 1), and optionally OmniPlacement's dynamic rebalancer fed with every step's
    routing counts. Installed on an engine core by ``attach``."""

    def __init__(self, runner: Any, ranks: ExpertParallelRanks | None = None, rebalancer: OmniRebalancer | None = None,
                 own_ranks: bool = False) -> None:
        self.runner = runner
        self.ranks = ranks
        self.collective = None if ranks is None else ranks.collective
        self.own_ranks = own_ranks
        self.rebalancer = rebalancer
        self.moe: ExpertRuntime = runner.moe
        self._last_counts = self.moe.expert_counts.cpu().numpy().copy()
        if self.collective is not None:
            self.moe.on_apply = self._send_placement

    @property
    def processes(self) -> list[Any]:
        return [] if self.ranks is None else self.ranks.processes

    @property
    def world_size(self) -> int:
        return self.moe.world_size

    def _send_placement(self, placement: Placement, live: bool) -> None:
        assert self.collective is not None
        self.collective.send(("placement", (placement.slot_expert.copy(), live)))

    def execute(self, plan: SchedulerOutput) -> SampledTokens:
        if not plan.scheduled:
            return SampledTokens()
        if self.collective is not None:
            self.collective.send(("step", _step_message(plan)))
        result = self.runner.execute(plan)
        if self.rebalancer is not None:
            counts = self.moe.expert_counts.cpu().numpy()
            delta = counts - self._last_counts
            placement = self.rebalancer.observe(counts if (delta < 0).any() else delta)  # < 0: counters reset
            self._last_counts = counts.copy()
            if placement is not None:
                self.moe.apply(placement, live=True)
        return result

    def read_blocks(self, block_ids: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.runner.read_blocks(block_ids)

    def write_blocks(self, block_ids: list[tuple[int, ...]], keys: torch.Tensor, values: torch.Tensor) -> None:
        if self.collective is not None:
            self.collective.send(("write_blocks", (block_ids, keys, values)))
        self.runner.write_blocks(block_ids, keys, values)

    def shutdown(self) -> None:
        """Detaches the other ranks from this engine; stops them when ``attach`` started them."""
        if self.ranks is not None and self.collective is not None:
            if self.own_ranks:
                self.ranks.close()
            else:
                self.collective.send(("detach", None))
                self.ranks.attached = False
        self.collective = None
        self.moe.on_apply = None


def attach(core: Any, world_size: int = 1, placement: Placement | None = None,
           rebalancer: OmniRebalancer | None = None, threads_per_rank: int = 1, timeout_s: float = 120.0,
           ranks: ExpertParallelRanks | None = None) -> MoEExecutor:
    """Makes ``core`` (an ``EngineCore`` of an MoE model) serve with its experts over ``world_size``
    processes: ranks 1..N-1 (``ranks``, started here when None, or ones started earlier and free)
    each load the model and keep only their slots, ``placement`` (default: experts in order, E/N per
    rank) is applied on every rank, and the executor is installed. Call ``shutdown()`` on the returned
    executor to stop the other ranks (or, with ``ranks`` given, to free them for the next engine)."""
    runner = core.executor
    runtime = getattr(runner, "moe", None)
    if not isinstance(runtime, ExpertRuntime):
        raise InvalidRequestError(f"{core.info.model_name} has no mixture-of-experts layers", "model")
    experts = runtime.moe.num_experts
    if ranks is not None:
        if ranks.world_size != world_size:
            raise InvalidRequestError(f"ranks has world_size {ranks.world_size}, asked for {world_size}", "ranks")
        if ranks.attached or ranks.collective is None:
            raise InvalidRequestError("these EP ranks serve another engine or were closed", "ranks")
        threads_per_rank = ranks.threads
    if world_size < 1 or world_size > experts:
        raise InvalidRequestError(f"world_size must be in [1, {experts}] (one expert per rank at least), "
                                  f"got {world_size}", "world_size")
    if placement is None:
        from edgecloud.llm.moe.placement import static_placement

        placement = static_placement(len(runtime.layers), experts, world_size)
    if placement.num_ranks != world_size:
        raise InvalidRequestError(f"placement is for {placement.num_ranks} ranks, world_size is {world_size}",
                                  "placement")
    if world_size == 1:
        runtime.apply(placement, live=False)
        executor = MoEExecutor(runner, rebalancer=rebalancer)
        core.executor = executor
        return executor
    # Every rank must compute the dense parts bit for bit alike (they route on them): same threads.
    torch.set_num_threads(threads_per_rank)
    own = ranks is None
    if ranks is None:
        ranks = ExpertParallelRanks(world_size, threads_per_rank, timeout_s)
    collective = ranks.collective
    assert collective is not None
    config = EngineConfig(**{**core.config.__dict__, "model": core.info.model_dir, "num_threads": threads_per_rank})
    try:
        collective.send(("load", (config, placement.slot_expert.copy())))
        runtime.join_group(0, collective, placement)
        collective.all_reduce(torch.ones(1))  # every rank has loaded its experts
    except RuntimeError as error:
        ranks.collective = None  # a rank failed: nothing more can be sent to the others
        for process in ranks.processes:
            process.kill()
        ranks.close()
        codes = [process.exitcode for process in ranks.processes]
        raise RuntimeError(f"expert-parallel ranks 1..{world_size - 1} did not load the model (exit codes "
                           f"{codes}): {error}") from None
    ranks.attached = True
    executor = MoEExecutor(runner, ranks, rebalancer, own_ranks=own)
    core.executor = executor
    return executor
