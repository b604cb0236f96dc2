"""LoRA adapters in the simulator (LoRAServe, arXiv 2511.22880): instances that hold adapters in
device slots and host memory and load them on demand, steps that pay for their adapters by rank,
and the multi-tenant workload whose adapter popularity drifts.

A ``LoRASimInstance`` is a ``SimInstance`` (the engine's own scheduler, with its ``max_loras``
limit on distinct adapters among running requests, and KV manager) whose steps also price:

- **loads**, as the engine makes them (``async_loads``, the engine's ``lora_async_loads``, on by
  default): a waiting request whose adapter is in neither host memory nor a device slot starts
  its read — from a peer instance that holds it (``remote``: GPUDirect RDMA over the inter-node
  link), else from disk — in the instance's one loader (reads queue), and waits, while the
  requests behind it and the running ones go on; it is admitted once the read is done. An instance
  whose only work waits on reads idles in waits of at most 10 ms (the engine core's wait on its
  loader) until one is done. A step then brings the adapters it needs into device slots from host
  memory (host-to-device link), stalling only that step by the copy. With ``async_loads`` off
  (vLLM's worker, and the engine before session 8) the step that needs an adapter reads it itself
  and every request waits. Device slots and host memory are LRU caches of ``max_loras`` and
  ``host_adapters`` adapters; an adapter fetched or read is kept in host memory.
- **registration** (``register``, on by default, for the policies that place adapters: loraserve):
  LoRAServe places every adapter across the cluster when it is registered and reaches it over
  GPUDirect RDMA where it is missing, so no request of it waits on a disk read. Each adapter's
  weights are put in the host memory of one instance (its home by the policy's registration
  placement: rank order, equal counts) before the first request, pinned there (the cluster's copy:
  never evicted); the other instances fetch it from there. An instance pins at most
  ``host_adapters - max_loras`` adapters (room is left for those it fetches); adapters beyond what
  the cluster's host memory holds are not registered and are read from disk at their first use.
  The baselines (slora, affinity) keep each instance's own host-memory LRU and read a miss from
  disk, with the same host memory per instance (docs/lora.md, "The paper's protocol"). With
  ``baselines_hold_all`` they instead hold every adapter in every instance's host memory from the
  start (S-LoRA's own premise, "stores all adapters in the main memory"; beyond ``host_adapters``:
  for the sensitivity of the comparison to the baseline's memory, not a budget a node has).
- **LoRA products**: ``LoRACostModel.step_time`` over the step's (tokens, rank) segments, padded
  to the step's largest rank when the kernel is rank-oblivious (``padded``).

Slots take device memory (``max_loras`` adapters of the largest rank, as vLLM reserves them), so
fewer KV blocks are left. Sizes follow from ranks: a rank-r adapter of every projection of
Llama-3-8B is r × 5.2 MB in bf16.

The workload: ``AdapterPopulation`` names N adapters with ranks drawn from a set, and a Zipf
popularity over them whose order rotates by ``drift_shift`` places every ``drift_period_s``
(yesterday's favourites cool down, others warm up); each request of a trace gets an adapter drawn
from the popularity at its arrival time.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgecloud.cluster.config import Role
from edgecloud.cluster.lora import Placement, place_by_rank
from edgecloud.cluster.policies import make_policy
from edgecloud.llm.lora.cost import LoRACostModel
from edgecloud.llm.perf_model import HardwareProfile, PerfModel
from edgecloud.llm.scheduler import SchedulerOutput
from edgecloud.sim.instance import SimEngineConfig, SimInstance
from edgecloud.sim.profiles import kv_blocks, load_hardware, load_model, perf_model
from edgecloud.sim.run import SimClusterSpec
from edgecloud.sim.simulator import ClusterSimulator, SimRequest, SimResult, TransferModel

RANKS = (8, 16, 32, 64, 128)


@dataclass(frozen=True)
class AdapterLinks:
    """Where an adapter's bytes come from: host memory to the device (PCIe), a peer's memory to
    this device (RDMA; None: no remote access), disk (read, then host to device)."""

    host_to_device: TransferModel
    disk: TransferModel
    peer: TransferModel | None = None

    @classmethod
    def for_hardware(cls, hardware: HardwareProfile, remote: bool) -> AdapterLinks:
        """Stated assumptions: PCIe 5.0 x16 at 40 GB/s effective, an NVMe read at 3 GB/s plus 2 ms
        (open, parse, check), RDMA at the hardware's inter-node bandwidth (H100: 400 Gb/s)."""
        rdma = hardware.inter_node_bandwidth or hardware.network_bandwidth
        return cls(TransferModel(40e9, 10e-6), TransferModel(3e9, 2e-3),
                   TransferModel(rdma, hardware.network_latency_s + 20e-6) if remote and rdma > 0 else None)


@dataclass(frozen=True)
class LoRASimSettings:
    max_loras: int = 16  # device slots: the most distinct adapters among running requests
    max_lora_rank: int = 128
    host_adapters: int = 128  # adapters kept in host memory per instance
    padded: bool = True  # rank-oblivious kernel: every segment runs to the step's largest rank
    async_loads: bool = True  # reads off the step, only the adapter's requests wait (the engine's default)
    register: bool = True  # adapters placed across the cluster before the run (the policies that place them)
    baselines_hold_all: bool = False  # the other policies: every adapter in every instance's host memory ahead

    def __post_init__(self) -> None:
        for name in ("max_loras", "max_lora_rank", "host_adapters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class AdapterDirectory:
    """Which instances hold each adapter in host memory: where a peer fetch can read it from."""

    def __init__(self) -> None:
        self.holders: dict[str, set[str]] = defaultdict(set)


class LoRASimInstance(SimInstance):
    def __init__(
        self, name: str, perf: PerfModel, config: SimEngineConfig, fingerprint: bytes, *, ranks: dict[str, int],
        cost: LoRACostModel, links: AdapterLinks, settings: LoRASimSettings, directory: AdapterDirectory,
        role: Role = "mixed", pool: str = "default",
    ) -> None:
        super().__init__(name, perf, config, fingerprint, role, pool)
        self.scheduler.max_loras = settings.max_loras
        self.ranks = ranks
        self.cost = cost
        self.links = links
        self.settings = settings
        self.directory = directory
        self.device: OrderedDict[str, None] = OrderedDict()
        self.host: OrderedDict[str, None] = OrderedDict()
        self.pinned: set[str] = set()  # registered here: the cluster's copy, never evicted from host memory
        self.loads: Counter[str] = Counter()  # adapter loads by source: host, peer, disk
        self.load_s = 0.0
        self.lora_s = 0.0
        self.skew_s = 0.0  # of ``lora_s``: what padding to the step's largest rank added (the rank skew)
        # reads off the step (``async_loads``): adapter -> when its read is done; the loader is free
        # from ``_loader_free``; ``read_s``: the loader's busy seconds
        self._reads: dict[str, float] = {}
        self._loader_free = 0.0
        self._now = 0.0
        self.read_s = 0.0
        self.idle_waits = 0
        if settings.async_loads:
            self.scheduler.adapter_ready = self._adapter_ready

    def _adapter_ready(self, adapter: str) -> bool:
        """The engine's ``LoRAManager.ready`` on the simulated clock: in host memory or a slot, or
        its read (started now if not yet) is done."""
        if adapter in self.host or adapter in self.device:
            return True
        done = self._reads.get(adapter)
        if done is None:
            size = self.cost.adapter_bytes(self.ranks[adapter])
            peers = self.directory.holders.get(adapter, set()) - {self.name}
            if self.links.peer is not None and peers:
                source, seconds = "peer", self.links.peer.seconds(size)
            else:
                source, seconds = "disk", self.links.disk.seconds(size)
            self.loads[source] += 1
            self.read_s += seconds
            self._loader_free = max(self._now, self._loader_free) + seconds
            self._reads[adapter] = self._loader_free
            return False
        if done > self._now + 1e-12:
            return False
        del self._reads[adapter]
        self._to_host(adapter)
        return True

    def register(self, adapter: str) -> None:
        """Holds ``adapter`` in host memory from now on (its registration here)."""
        self.pinned.add(adapter)
        self._to_host(adapter)

    def _to_host(self, adapter: str) -> None:
        self.host[adapter] = None
        self.host.move_to_end(adapter)
        self.directory.holders[adapter].add(self.name)
        if len(self.host) <= self.settings.host_adapters:
            return
        for old in [a for a in self.host if a not in self.pinned][:len(self.host) - self.settings.host_adapters]:
            del self.host[old]
            self.directory.holders[old].discard(self.name)

    def start_step(self, now: float) -> float | None:
        self._now = now
        duration = super().start_step(now)
        if duration is None:
            if not self._reads:
                return None
            # the only work waits on reads: an empty step, as the engine core waits on its loader
            self._plan = SchedulerOutput()
            self.busy = True
            self.idle_waits += 1
            return max(1e-6, min(0.01, min(self._reads.values()) - now))
        assert self._plan is not None
        tokens: dict[str, int] = {}
        for s in self._plan.scheduled:
            adapter = s.request.adapter_id
            if adapter is not None:
                tokens[adapter] = tokens.get(adapter, 0) + s.num_new_tokens
        loading = sum(self._activate(a, tokens) for a in tokens)
        segments = [(t, self.ranks[a]) for a, t in tokens.items()]
        compute = self.cost.step_time(segments, self.settings.padded)
        if self.settings.padded:
            self.skew_s += compute - self.cost.step_time(segments)
        self.load_s += loading
        self.lora_s += compute
        self.busy_s += loading + compute
        return duration + loading + compute

    def _activate(self, adapter: str, step: dict[str, int]) -> float:
        """Seconds to bring ``adapter`` into a device slot (0 when it is in one)."""
        if adapter in self.device:
            self.device.move_to_end(adapter)
            return 0.0
        size = self.cost.adapter_bytes(self.ranks[adapter])
        peers = self.directory.holders.get(adapter, set()) - {self.name}
        if adapter in self.host:
            source, seconds = "host", self.links.host_to_device.seconds(size)
        elif self.links.peer is not None and peers:
            source, seconds = "peer", self.links.peer.seconds(size)
        else:
            source, seconds = "disk", self.links.disk.seconds(size) + self.links.host_to_device.seconds(size)
        self.loads[source] += 1
        self.device[adapter] = None
        for old in list(self.device):
            if len(self.device) <= self.settings.max_loras:
                break
            if old not in step:
                del self.device[old]
        self._to_host(adapter)
        return seconds


@dataclass(frozen=True)
class AdapterPopulation:
    """``num_adapters`` adapters with ranks drawn uniformly from ``ranks``; popularity Zipf(``zipf_s``)
    over an order that rotates by ``drift_shift`` every ``drift_period_s`` seconds."""

    num_adapters: int = 1000
    ranks: tuple[int, ...] = RANKS
    zipf_s: float = 1.0
    drift_period_s: float = 60.0
    drift_shift: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_adapters < 1:
            raise ValueError(f"num_adapters must be >= 1, got {self.num_adapters}")
        if not self.ranks or min(self.ranks) < 1:
            raise ValueError(f"ranks must be positive, got {self.ranks}")
        if self.zipf_s < 0 or not self.drift_period_s > 0 or self.drift_shift < 0:
            raise ValueError("zipf_s >= 0, drift_period_s > 0 and drift_shift >= 0 are needed")

    @property
    def names(self) -> list[str]:
        return [f"lora-{i:04d}" for i in range(self.num_adapters)]

    def rank_of(self) -> dict[str, int]:
        rng = np.random.default_rng([self.seed, 1])
        drawn = rng.choice(np.asarray(self.ranks), size=self.num_adapters)
        return dict(zip(self.names, (int(r) for r in drawn), strict=True))

    def assign(self, arrivals: Sequence[float]) -> list[str]:
        """The adapter of each request, by its arrival time."""
        rng = np.random.default_rng([self.seed, 2])
        order = rng.permutation(self.num_adapters)  # popularity position -> adapter index
        weights = 1.0 / np.arange(1, self.num_adapters + 1) ** self.zipf_s
        cdf = np.cumsum(weights / weights.sum())
        positions = np.minimum(np.searchsorted(cdf, rng.random(len(arrivals))), self.num_adapters - 1)
        epochs = (np.asarray(arrivals, dtype=float) // self.drift_period_s).astype(np.int64)
        names = self.names
        return [names[order[(p + e * self.drift_shift) % self.num_adapters]] for p, e in zip(positions, epochs,
                                                                                            strict=True)]

    def describe(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def with_adapters(workload: Sequence[SimRequest], population: AdapterPopulation) -> list[SimRequest]:
    adapters = population.assign([r.arrival_s for r in workload])
    return [dataclasses.replace(r, adapter_id=a) for r, a in zip(workload, adapters, strict=True)]


@dataclass
class LoRACluster:
    instances: list[LoRASimInstance]
    directory: AdapterDirectory
    cost: LoRACostModel
    rank_cost: float  # extra base-model FLOPs per token per unit of rank (``LoRACostModel.rank_cost``)


def build_lora_cluster(spec: SimClusterSpec, settings: LoRASimSettings, ranks: dict[str, int],
                       remote: bool) -> LoRACluster:
    """``spec.mixed`` LoRA instances of ``spec.model`` on ``spec.hardware``; adapter slots take
    their memory out of the KV cache."""
    if spec.prefill or spec.decode or spec.devices != 1:
        raise ValueError("LoRA clusters are simulated with mixed single-device instances")
    hardware, calibrated = load_hardware(spec.hardware)
    if calibrated is not None:
        raise ValueError("LoRA clusters are simulated on accelerator presets (h100, ...), not CPU profiles")
    model = load_model(spec.model)
    perf = perf_model(hardware, model, 1)
    cost = LoRACostModel.for_model(hardware, model.profile)
    num_blocks = kv_blocks(hardware, model, perf.parallel, spec.block_size, spec.memory_utilization)
    slot_bytes = settings.max_loras * cost.adapter_bytes(settings.max_lora_rank)
    block_bytes = model.profile.kv_bytes_per_token * spec.block_size
    num_blocks = max(2, num_blocks - int(slot_bytes // block_bytes))
    config = SimEngineConfig(num_blocks, model.max_model_len, spec.block_size, spec.max_num_seqs,
                             spec.max_num_batched_tokens, spec.enable_prefix_caching)
    links = AdapterLinks.for_hardware(hardware, remote)
    directory = AdapterDirectory()
    instances = [LoRASimInstance(f"mixed{i}", perf, config, b"sim", ranks=ranks, cost=cost, links=links,
                                 settings=settings, directory=directory) for i in range(spec.mixed)]
    return LoRACluster(instances, directory, cost, cost.rank_cost(model.profile))


# Each policy as the LoRAServe paper runs it: the baselines load from disk, LoRAServe from peers.
REMOTE_ACCESS = {"slora": False, "affinity": False, "loraserve": True}
# The policies that place every adapter across the cluster at registration (``LoRASimSettings.register``).
REGISTERS = {"loraserve"}


def register_adapters(cluster: LoRACluster, placement: Placement, settings: LoRASimSettings) -> dict[str, str]:
    """Pins each adapter of ``placement`` in the host memory of its home (the instance taking the
    largest share of it), at most ``host_adapters - max_loras`` an instance, in the placement's
    order. Returns adapter -> home of those registered."""
    by_name = {i.name: i for i in cluster.instances}
    room = max(0, settings.host_adapters - settings.max_loras)
    homes: dict[str, str] = {}
    for adapter, parts in placement.homes.items():
        name = max(parts, key=lambda part: part[1])[0]
        instance = by_name[name]
        if len(instance.pinned) < room:
            instance.register(adapter)
            homes[adapter] = name
    return homes


def simulate_lora(spec: SimClusterSpec, policy: str, workload: Sequence[SimRequest], population: AdapterPopulation,
                  settings: LoRASimSettings, policy_options: dict[str, object] | None = None,
                  ) -> tuple[SimResult, LoRACluster]:
    ranks = population.rank_of()
    cluster = build_lora_cluster(spec, settings, ranks, REMOTE_ACCESS.get(policy, False))
    options = dict(policy_options or {})
    if policy == "loraserve":
        options.setdefault("ranks", ranks)
        options.setdefault("rank_cost", cluster.rank_cost)
    if policy in REGISTERS and settings.register:
        # every adapter is expected to be as busy as any other until its requests say otherwise
        weight = {a: 1.0 + cluster.rank_cost * r for a, r in ranks.items()}
        placement = place_by_rank(weight, ranks, sorted(i.name for i in cluster.instances))
        homes = register_adapters(cluster, placement, settings)
        options.setdefault("registered", {a: placement.instances_of(a) for a in homes})
    elif policy not in REGISTERS and settings.baselines_hold_all:
        for instance in cluster.instances:
            for adapter in ranks:
                instance.register(adapter)
    if policy == "affinity":  # its model of what an instance holds, whatever the protocol
        options.setdefault("capacity", settings.host_adapters)
    sim = ClusterSimulator(cluster.instances, make_policy(policy, **options), record_token_times=False)
    return sim.run(workload), cluster
