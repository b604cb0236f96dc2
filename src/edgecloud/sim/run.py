"""A simulated cluster from names: a model (``llama-3-8b``, a config.json...), an accelerator
(``h100``, a calibrated JSON...), instances by role, devices per instance; and a trace replay on
it. What ``edgecloud sim run`` and the benchmarks' simulated cases build."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from edgecloud.bench.traces import read_trace
from edgecloud.bench.workload import LengthScaling
from edgecloud.cluster.policies import make_policy
from edgecloud.llm.perf_model import Parallelism
from edgecloud.sim.instance import SimEngineConfig, SimInstance
from edgecloud.sim.profiles import kv_blocks, load_hardware, load_model, perf_model
from edgecloud.sim.simulator import ClusterSimulator, SimRequest, SimResult, TransferModel
from edgecloud.sim.workload import iter_trace_requests, scale_rate, trace_requests


@dataclass
class SimClusterSpec:
    """``mixed`` + ``prefill`` + ``decode`` instances of ``model`` on ``devices`` x ``hardware`` each."""

    model: str = "llama-3-8b"
    hardware: str = "h100"
    mixed: int = 1
    prefill: int = 0
    decode: int = 0
    devices: int = 1
    block_size: int = 16
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    memory_utilization: float = 0.9
    enable_prefix_caching: bool = True

    @property
    def num_instances(self) -> int:
        return self.mixed + self.prefill + self.decode

    @property
    def accelerators(self) -> int:
        return self.num_instances * self.devices

    def describe(self) -> str:
        parts = [f"{n} {role}" for role, n in (("mixed", self.mixed), ("prefill", self.prefill),
                                                ("decode", self.decode)) if n]
        return f"{' + '.join(parts)} x {self.devices} {self.hardware} ({self.model})"


def build_instances(spec: SimClusterSpec) -> tuple[list[SimInstance], TransferModel, int]:
    """The instances, the KV link between them, and the model's context limit."""
    hardware, calibrated = load_hardware(spec.hardware)
    model = load_model(spec.model)
    parallel = Parallelism(spec.devices)
    perf = perf_model(hardware, model, spec.devices)
    if calibrated is not None:  # a CPU profile: the memory is the engine's KV budget, not HBM
        num_blocks = max(2, int(calibrated.engine.get("kv_cache_memory_mb", 512) * 2**20
                                // (model.profile.kv_bytes_per_token * spec.block_size)))
        link = TransferModel(calibrated.transfer_bandwidth or 1e9)
    else:
        num_blocks = kv_blocks(hardware, model, parallel, spec.block_size, spec.memory_utilization)
        link = TransferModel(hardware.link_bandwidth(2 * hardware.devices_per_node) * spec.devices,
                             hardware.network_latency_s)
    config = SimEngineConfig(num_blocks, model.max_model_len, spec.block_size, spec.max_num_seqs,
                             spec.max_num_batched_tokens, spec.enable_prefix_caching)
    instances = []
    for role, count in (("mixed", spec.mixed), ("prefill", spec.prefill), ("decode", spec.decode)):
        instances += [SimInstance(f"{role}{i}", perf, config, b"sim", role) for i in range(count)]  # type: ignore[arg-type]
    return instances, link, model.max_model_len


def trace_workload_for(
    trace_path: str, max_len: int, *, num_requests: int | None = None, duration_s: float | None = None,
    rate_scale: float = 1.0, time_scale: float = 1.0, scaling: LengthScaling | None = None, seed: int = 0,
    stream: bool = False,
) -> list[SimRequest] | Iterator[SimRequest]:
    """A trace's requests (the first ``num_requests``, or those of the first ``duration_s``
    seconds), the arrival rate multiplied by ``rate_scale`` (pattern kept) and time by ``time_scale``;
    with ``stream``, an iterator that builds each prompt as the simulator reads it."""
    trace = read_trace(trace_path, limit=num_requests)
    if duration_s is not None:
        trace = [r for r in trace if r.arrival_s < duration_s]
    if rate_scale != 1.0:
        trace = scale_rate(trace, rate_scale, seed)
    if stream:  # the simulator reads a stream in arrival order
        trace = sorted(trace, key=lambda r: r.arrival_s)
        return iter_trace_requests(trace, scaling, time_scale, max_len=max_len, seed=seed)
    return trace_requests(trace, scaling, time_scale, max_len=max_len, seed=seed)


def simulate(
    spec: SimClusterSpec, policy: str, workload: Iterable[SimRequest], policy_options: dict[str, object] | None = None,
    record_token_times: bool = False, decode_runs: bool = False, incremental: bool = False,
) -> SimResult:
    instances, link, _ = build_instances(spec)
    sim = ClusterSimulator(instances, make_policy(policy, **(policy_options or {})), transfer=link,
                           record_token_times=record_token_times, decode_runs=decode_runs, incremental=incremental)
    return sim.run(workload)
