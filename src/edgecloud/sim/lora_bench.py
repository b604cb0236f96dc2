"""``edgecloud bench lora``: LoRAServe's measurements (arXiv 2511.22880), real where this machine
can run them and simulated at cluster scale, side by side in one JSON.

1. **Rank skew, real** (this CPU, the engine): the median decode step of a batch whose adapters all
   have a small rank, all a large rank, or mix one large among small ones, with the engine's SGMV
   (each segment to its own rank) and with a rank-oblivious kernel (every segment to the step's
   largest rank). The same cases priced by ``LoRACostModel`` for the simulated accelerator.
2. **Remote fetch vs disk, real**: two engine cores in their own processes; an adapter loaded by
   the second from disk (``load_lora_adapter``) against fetched from the first
   (``export_lora_adapter`` then ``import_lora_adapter``): relayed through the front end over the
   cores' ZMQ sockets, and directly through a shared-memory file (``llm.lora.transfer``).
3. **Policies, real** (``sim.lora_real``): a few CPU instances of the demo model behind the
   cluster's front end, the trace's arrivals at a rate they can serve, a dozen adapters.
4. **Policies, simulated** (32 H100 with Llama-3-8B by default; SIMULATED in every row): the
   Azure conversation trace's arrivals, multiplied to load the cluster, each request given an
   adapter of a drifting Zipf popularity (``AdapterPopulation``). Per policy: the SLO attainment,
   throughput and p99 TTFT at each rate of a grid; the highest rate meeting the SLO (≥ 99% of
   requests within the TTFT and TPOT objectives) and its throughput; and the fewest instances
   that meet the SLO at a reference rate (the highest rate ``slora`` sustains on the full cluster),
   found by trying counts downward from the full cluster until one fails.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgecloud.bench.machine import LoadWatch
from edgecloud.bench.metrics import Slo, summarize
from edgecloud.bench.workload import LengthScaling
from edgecloud.sim.compare import to_request_records
from edgecloud.sim.lora import (
    AdapterPopulation,
    LoRASimSettings,
    build_lora_cluster,
    simulate_lora,
    with_adapters,
)
from edgecloud.sim.lora_real import RealLoRASettings, real_workload, run_real_policy
from edgecloud.sim.run import SimClusterSpec, trace_workload_for

POLICIES = ("slora", "affinity", "loraserve")


@dataclass
class LoRABenchSettings:
    trace: str
    policies: Sequence[str] = POLICIES
    population: AdapterPopulation = field(default_factory=lambda: AdapterPopulation(drift_period_s=2.5))
    lora: LoRASimSettings = field(default_factory=LoRASimSettings)
    slo: Slo = field(default_factory=lambda: Slo(ttft=1.0, tpot=0.1))
    sim_hardware: str = "h100"
    sim_model: str = "llama-3-8b"
    sim_instances: int = 32
    # Time is compressed to keep a simulation within minutes on two cores: the first 10 s of the
    # trace at 50-300x its rate, popularity moving every 2.5 s, loraserve rebalancing every 1 s.
    duration_s: float = 10.0  # of the trace, at its own pace (before the rate scale)
    rebalance_s: float = 1.0  # loraserve's period
    window_s: float = 2.0  # half-life of loraserve's load estimate
    rate_scales: Sequence[float] = (50.0, 100.0, 150.0, 200.0, 300.0)
    output_scale: float = 0.25
    target_attainment: float = 0.99
    # Seconds of the trace replayed before the measured ``duration_s`` and left out of every figure:
    # caches, host memory and the placement start empty, so without it the first uses of every
    # adapter (compulsory disk reads no policy can avoid) set the tail. 0: measure from a cold start.
    warmup_s: float = 0.0
    real: bool = True
    real_model: str = "demo"
    real_threads: int = 1
    real_batch: int = 8
    real_cluster: RealClusterBench | None = None
    simulate: bool = True  # the simulated policy runs (the longest part)
    seed: int = 0


@dataclass
class RealClusterBench:
    """The policies on a real CPU cluster: ``requests`` of the trace at ``rate`` requests/s (its
    arrival pattern kept), prompts of ``input_len`` tokens, ``output_len`` out, over ``population``."""

    cluster: RealLoRASettings = field(default_factory=RealLoRASettings)
    population: AdapterPopulation = field(default_factory=lambda: AdapterPopulation(
        num_adapters=12, drift_period_s=15.0, drift_shift=3))
    requests: int = 150
    rate: float = 3.0
    input_len: int = 48
    output_len: int = 16
    slo: Slo = field(default_factory=lambda: Slo(ttft=1.0, tpot=0.2))


# -- 1. rank skew ---------------------------------------------------------------------------------


def write_random_adapter(directory: Path, model_dir: Path, rank: int, seed: int) -> Path:
    """A PEFT adapter directory (every projection, ``lora_alpha = rank``) with random weights, for
    timing: what a step costs does not depend on the values."""
    import torch
    from safetensors.torch import save_file

    from edgecloud.llm.config import ModelConfig
    from edgecloud.llm.lora.adapter import projection_shapes

    mc = ModelConfig.from_file(model_dir / "config.json")
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(mc.num_hidden_layers):
        for name, (fan_in, fan_out) in projection_shapes(mc).items():
            owner = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{owner}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, fan_in, generator=generator) * 0.02
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(fan_out, rank, generator=generator) * 0.02
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": rank,
              "target_modules": list(projection_shapes(mc)), "lora_dropout": 0.0, "bias": "none",
              "base_model_name_or_path": str(model_dir)}
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


SKEW_CASES = {  # batch -> the rank of each request's adapter (one adapter per request)
    "uniform small": lambda n, small, large: [small] * n,
    "mixed (one large)": lambda n, small, large: [large] + [small] * (n - 1),
    "uniform large": lambda n, small, large: [large] * n,
}


def rank_skew_real(model: str, threads: int, batch: int, small: int = 8, large: int = 128, steps: int = 12,
                   workdir: Path | None = None) -> list[dict[str, Any]]:
    """Median decode step (ms) per case and kernel on this machine."""
    import tempfile

    from edgecloud.llm import SamplingParams
    from edgecloud.llm.config import EngineConfig
    from edgecloud.llm.engine import LLMEngine
    from edgecloud.llm.model_source import resolve_model

    model_dir = resolve_model(model).directory
    rows = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        # request i of a case runs adapter f"r{rank}-{i}": distinct adapters in every batch
        wanted = {(rank, i) for ranks_of in SKEW_CASES.values() for i, rank in enumerate(ranks_of(batch, small, large))}
        modules = [(f"r{rank}-{i}", str(write_random_adapter(Path(tmp) / f"r{rank}-{i}", Path(model_dir), rank, i)),
                    rank) for rank, i in sorted(wanted)]
        config = EngineConfig(model=model, dtype="float32", num_threads=threads, max_loras=batch,
                              max_lora_rank=large, max_cpu_loras=len(modules) + 1,
                              lora_modules=tuple((n, p) for n, p, _ in modules))
        engine = LLMEngine(config)
        lora = engine.core.lora
        assert lora is not None
        params = SamplingParams(temperature=0.0, max_tokens=steps + 8, ignore_eos=True)
        for kernel in ("sgmv", "padded"):
            lora.slots.pad_rank = kernel == "padded"
            for case, ranks_of in SKEW_CASES.items():
                names = [f"r{rank}-{i}" for i, rank in enumerate(ranks_of(batch, small, large))]
                for i, name in enumerate(names):
                    engine.add_request(f"{kernel}-{case}-{i}", [5 + i, 17, 33, 90, 41, 7, 8, 9], params,
                                       adapter_id=name)
                engine.step()  # the prefill
                engine.step()
                times = []
                for _ in range(steps):
                    start = time.perf_counter()
                    engine.step()
                    times.append((time.perf_counter() - start) * 1000)
                while engine.has_unfinished():
                    engine.step()
                rows.append({"mode": "real", "kernel": kernel, "case": case, "batch": batch,
                             "ranks": ranks_of(batch, small, large), "step_ms_p50": statistics.median(times),
                             "step_ms_min": min(times), "steps": steps})
        lora.slots.pad_rank = False
    return rows


def rank_skew_modelled(settings: LoRABenchSettings, small: int = 8, large: int = 128, tokens: int = 8
                       ) -> list[dict[str, Any]]:
    """The same cases on the simulated accelerator: ``tokens`` decoding requests per adapter."""
    from edgecloud.llm.perf_model import StepShape

    cluster = build_lora_cluster(SimClusterSpec(settings.sim_model, settings.sim_hardware, 1), settings.lora, {},
                                 remote=False)
    perf = cluster.instances[0].perf
    batch = settings.lora.max_loras
    base = perf.step_time([StepShape(1, 1024)] * (batch * tokens))
    rows = []
    for kernel in ("sgmv", "padded"):
        for case, ranks_of in SKEW_CASES.items():
            ranks = ranks_of(batch, small, large)
            lora = cluster.cost.step_time([(tokens, r) for r in ranks], padded=kernel == "padded")
            rows.append({"mode": "sim", "kernel": kernel, "case": case, "batch": batch * tokens, "ranks": ranks,
                         "step_ms_p50": (base + lora) * 1000, "lora_ms": lora * 1000,
                         "hardware": settings.sim_hardware, "model": settings.sim_model})
    return rows


# -- 2. remote fetch vs disk ----------------------------------------------------------------------


def evict_from_page_cache(directory: Path) -> int:
    """Drops ``directory``'s files from the OS page cache (written back first), so the next read
    comes from the disk: the cold read of an adapter an instance has not seen. Only these files
    are evicted, nothing of other processes. Returns the bytes of those files still cached
    afterwards (``mincore``; -1 where it cannot be read)."""
    cached = 0
    for path in sorted(directory.iterdir()):
        if not path.is_file():
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            size = os.fstat(fd).st_size
            if size:
                resident = _resident_bytes(fd, size)
                cached = -1 if resident < 0 or cached < 0 else cached + resident
        finally:
            os.close(fd)
    return cached


def _resident_bytes(fd: int, size: int) -> int:
    """Bytes of an open file in the page cache, by ``mincore`` over a read-only mapping."""
    import ctypes
    import mmap as mmap_module

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    address = libc.mmap(None, size, mmap_module.PROT_READ, mmap_module.MAP_SHARED, fd, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        return -1
    try:
        page = mmap_module.PAGESIZE
        pages = (size + page - 1) // page
        vector = ctypes.create_string_buffer(pages)
        if libc.mincore(ctypes.c_void_p(address), size, vector) != 0:
            return -1
        return sum(1 for b in vector.raw if b & 1) * page
    finally:
        libc.munmap(ctypes.c_void_p(address), size)


def fetch_real(model: str, threads: int, rank: int = 128, repeats: int = 5, workdir: Path | None = None
               ) -> dict[str, Any]:
    """One adapter loaded by an engine core from disk — cold (its files evicted from the page
    cache first) and warm (read again at once) — against fetched from a peer core, relayed (the
    tensors in the export's reply and the import's call, through the front end over the cores'
    ZMQ sockets) and direct (the peer writes them to a shared-memory file, the importer maps it:
    ``llm.lora.transfer``). Each repeat loads it under a new name, in the order cold disk, warm
    disk, peer relayed, peer direct. ``peer_ms_p50`` is the direct path's, which cores on one
    host use."""
    import tempfile

    from edgecloud.llm import AsyncEngine
    from edgecloud.llm.config import EngineConfig
    from edgecloud.llm.lora.transfer import fetch_adapter
    from edgecloud.llm.model_source import resolve_model

    async def run(path: str) -> dict[str, Any]:
        base = EngineConfig(model=model, dtype="float32", num_threads=threads, enable_lora=True,
                            max_lora_rank=rank, max_loras=2, max_cpu_loras=repeats * 4 + 2)
        peer = AsyncEngine(dataclasses.replace(base, lora_modules=(("src", path),)), core="process")
        dst = AsyncEngine(base, core="process")
        await peer.start()
        await dst.start()
        times: dict[str, list[float]] = {"cold": [], "warm": [], "relay": [], "shm": []}
        left_cached = []
        try:
            for i in range(repeats):
                left_cached.append(evict_from_page_cache(Path(path)))
                start = time.perf_counter()
                info = await dst.control("load_lora_adapter", lora_name=f"cold{i}", lora_path=path)
                times["cold"].append(time.perf_counter() - start)
                start = time.perf_counter()
                await dst.control("load_lora_adapter", lora_name=f"warm{i}", lora_path=path)
                times["warm"].append(time.perf_counter() - start)
                for transport, key in (("inline", "relay"), ("shm", "shm")):
                    start = time.perf_counter()
                    await fetch_adapter(peer, dst, "src", f"{key}{i}", transport)
                    times[key].append(time.perf_counter() - start)
        finally:
            await dst.shutdown()
            await peer.shutdown()
        ms = {k: [t * 1000 for t in v] for k, v in times.items()}
        return {"mode": "real", "rank": rank, "bytes": info["bytes"], "repeats": repeats,
                "disk_cold_ms_p50": statistics.median(ms["cold"]), "disk_ms_p50": statistics.median(ms["warm"]),
                "peer_ms_p50": statistics.median(ms["shm"]), "peer_relay_ms_p50": statistics.median(ms["relay"]),
                "disk_cold_ms": ms["cold"], "disk_ms": ms["warm"], "peer_ms": ms["shm"], "peer_relay_ms": ms["relay"],
                "cached_bytes_after_eviction": left_cached,
                "disk_note": "cold: the adapter's files evicted from the page cache (posix_fadvise DONTNEED) before "
                             "the load; warm: read again at once, from the page cache",
                "peer_note": "peer: direct, through a shared-memory file the importer maps (llm.lora.transfer); "
                             "peer_relay: the tensors relayed through the front end in the control messages"}

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = write_random_adapter(Path(tmp) / "a", Path(resolve_model(model).directory), rank, 0)
        return asyncio.run(run(str(path)))


# -- 3. policies on a real CPU cluster -------------------------------------------------------------


def real_cluster_cases(settings: LoRABenchSettings, log: Callable[[str], None]) -> list[dict[str, Any]]:
    import tempfile

    from edgecloud.bench.arrivals import trace_arrivals
    from edgecloud.bench.traces import TraceRequest, read_trace
    from edgecloud.llm.model_source import resolve_model

    bench = settings.real_cluster
    assert bench is not None
    model_dir = Path(resolve_model(bench.cluster.model).directory)
    trace = read_trace(settings.trace, limit=bench.requests)
    span = trace[-1].arrival_s - trace[0].arrival_s
    scale = (len(trace) / bench.rate) / span if span > 0 else 1.0
    arrivals = trace_arrivals([r.arrival_s for r in trace], scale)
    timed = [TraceRequest(t, r.input_len, r.output_len, r.hash_ids) for r, t in zip(trace, arrivals, strict=True)]
    from edgecloud.llm.config import ModelConfig

    vocab = ModelConfig.from_file(model_dir / "config.json").vocab_size
    workload = real_workload(timed, bench.population, bench.input_len, bench.output_len, vocab, settings.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        adapters = {name: (str(write_random_adapter(Path(tmp) / name, model_dir, rank, i)), rank)
                    for i, (name, rank) in enumerate(bench.population.rank_of().items())}
        for policy in settings.policies:
            row = run_real_policy(bench.cluster, adapters, policy, workload, bench.slo)
            row["rate_req_s"] = bench.rate
            log(f"real {policy} x{bench.cluster.instances}: attainment {row['slo_attainment']:.3f}, "
                f"{row['throughput_tok_s']:.1f} tok/s, p99 TTFT {row['ttft_ms_p99']:.0f} ms, {row['failed']} failed")
            rows.append(row)
    return rows


# -- 4. policies, simulated -----------------------------------------------------------------------


@dataclass
class PolicyRun:
    policy: str
    instances: int
    rate_scale: float
    slo_attainment: float
    throughput_tok_s: float
    ttft_ms_p99: float
    tpot_ms_p99: float
    requests: int
    loads: dict[str, int]
    wall_s: float
    # Instance-seconds over the whole run, summed over instances: busy (steps), of which stalled on
    # adapter loads, LoRA products, and the part of those the rank skew (padding) added.
    busy_s: float = 0.0
    load_s: float = 0.0
    lora_s: float = 0.0
    skew_s: float = 0.0
    read_s: float = 0.0  # the loaders' reads off the step (async loads): not in ``busy_s``


def run_policy(settings: LoRABenchSettings, policy: str, instances: int, rate_scale: float) -> PolicyRun:
    spec = SimClusterSpec(settings.sim_model, settings.sim_hardware, instances)
    from edgecloud.sim.profiles import load_model

    workload = trace_workload_for(settings.trace, load_model(settings.sim_model).max_model_len,
                                  duration_s=settings.warmup_s + settings.duration_s, rate_scale=rate_scale,
                                  time_scale=1.0, scaling=LengthScaling(1.0, settings.output_scale),
                                  seed=settings.seed)
    workload = with_adapters(workload, settings.population)
    options = {"rebalance_s": settings.rebalance_s, "window_s": settings.window_s} if policy == "loraserve" else None
    result, cluster = simulate_lora(spec, policy, workload, settings.population, settings.lora, options)
    measured = [r for r in result.records if r.arrival_s >= settings.warmup_s]
    summary = summarize(to_request_records(measured), settings.slo)
    loads: dict[str, int] = {}
    for instance in cluster.instances:
        for source, count in instance.loads.items():
            loads[source] = loads.get(source, 0) + count
    seconds = {name: sum(getattr(i, name) for i in cluster.instances) for name in ("busy_s", "load_s", "lora_s",
                                                                                    "skew_s", "read_s")}
    return PolicyRun(policy, instances, rate_scale, summary.slo_attainment, summary.output_token_throughput,
                     summary.ttft.p99 * 1000, summary.tpot.p99 * 1000, len(measured), loads, result.wall_s,
                     **seconds)


def min_instances(ok: Callable[[int], bool], high: int) -> int | None:
    """The fewest instances n such that ``ok`` holds for n and for every count above it up to
    ``high``: counts tried downward from ``high`` until the first that fails. None when ``high`` fails.

    A bisection assumed ``ok`` monotone, and SLO attainment is not, by a request or two around the
    99% line (session 7: loraserve passed with 12 instances, failed with 13 and 14); one lucky count
    below noisy ones then passed for the answer."""
    fewest = None
    for count in range(high, 0, -1):
        if not ok(count):
            break
        fewest = count
    return fewest


def bench_lora(settings: LoRABenchSettings, log: Callable[[str], None] = print) -> dict[str, Any]:
    watch = LoadWatch.begin(self_contained=False)
    result: dict[str, Any] = {"cases": [], "rank_skew": [], "fetch": None, "grid": [], "search": []}
    if settings.real:
        log("rank skew on this machine ...")
        result["rank_skew"] += rank_skew_real(settings.real_model, settings.real_threads, settings.real_batch)
        log("remote fetch vs disk on this machine ...")
        result["fetch"] = fetch_real(settings.real_model, settings.real_threads)
    if settings.real_cluster is not None:
        result["cases"] += real_cluster_cases(settings, log)
    result["rank_skew"] += rank_skew_modelled(settings)
    target = settings.target_attainment
    n = settings.sim_instances
    best: dict[str, PolicyRun | None] = {}
    grid: dict[tuple[str, float], PolicyRun] = {}
    for policy in settings.policies if settings.simulate else ():
        best[policy] = None
        missed = False
        for scale in settings.rate_scales:
            run = run_policy(settings, policy, n, scale)
            grid[(policy, scale)] = run
            result["grid"].append({**asdict(run), "mode": "sim"})
            log(f"sim {policy} x{n} rate x{scale}: attainment {run.slo_attainment:.3f}, "
                f"{run.throughput_tok_s:.0f} tok/s, p99 TTFT {run.ttft_ms_p99:.0f} ms, loads {run.loads}; busy "
                f"{run.busy_s:.1f} s, of which loading {run.load_s:.1f}, LoRA {run.lora_s:.1f} (rank skew "
                f"{run.skew_s:.1f}); reads off the step {run.read_s:.1f} ({run.wall_s:.0f} s)")
            if run.slo_attainment < target:
                missed = True
            elif not missed:  # the highest rate below which every rate met the SLO
                best[policy] = run
            if run.slo_attainment < 0.5:
                break  # past saturation: higher rates only take longer to simulate
    # Instances are counted at the highest rate ``slora`` sustains on the whole cluster; p99 TTFT
    # is compared at the highest rate ``loraserve`` sustains (and at slora's, in the grid).
    reference = best.get("slora")
    ref_scale = reference.rate_scale if reference is not None else min(settings.rate_scales)
    top = best.get("loraserve")
    ttft_scale = top.rate_scale if top is not None else ref_scale
    for policy in settings.policies if settings.simulate else ():
        def ok(count: int, policy: str = policy) -> bool:
            if count == n and (policy, ref_scale) in grid:
                return grid[(policy, ref_scale)].slo_attainment >= target
            run = run_policy(settings, policy, count, ref_scale)
            log(f"sim {policy} x{count} at rate x{ref_scale}: attainment {run.slo_attainment:.3f}")
            result["search"].append({**asdict(run), "mode": "sim"})
            return run.slo_attainment >= target

        fewest = min_instances(ok, n)
        at_slo = best[policy]
        at_ttft = grid.get((policy, ttft_scale)) or run_policy(settings, policy, n, ttft_scale)
        result["cases"].append({
            "mode": "sim", "policy": policy, "instances": n, "simulated": True,
            "cluster": f"{n} x {settings.sim_hardware} ({settings.sim_model}), SIMULATED",
            "throughput_tok_s": at_slo.throughput_tok_s if at_slo else 0.0,
            "rate_scale_at_slo": at_slo.rate_scale if at_slo else None,
            "slo_attainment": at_slo.slo_attainment if at_slo else at_ttft.slo_attainment,
            "ttft_ms_p99": at_ttft.ttft_ms_p99, "ttft_rate_scale": ttft_scale,
            "min_instances_for_slo": fewest, "instances_rate_scale": ref_scale,
        })
    result["machine"] = watch.finish().as_dict()
    result["settings"] = {
        "trace": settings.trace, "population": settings.population.describe(), "lora": asdict(settings.lora),
        "slo": {"ttft_s": settings.slo.ttft, "tpot_s": settings.slo.tpot, "attainment": target},
        "sim": {"hardware": settings.sim_hardware, "model": settings.sim_model, "instances": n,
                "duration_s": settings.duration_s, "warmup_s": settings.warmup_s,
                "rate_scales": list(settings.rate_scales),
                "loraserve": {"rebalance_s": settings.rebalance_s, "window_s": settings.window_s},
                "output_scale": settings.output_scale},
        "real": {"model": settings.real_model, "threads": settings.real_threads, "batch": settings.real_batch},
        "real_cluster": None if settings.real_cluster is None else {
            **asdict(settings.real_cluster), "slo": {"ttft_s": settings.real_cluster.slo.ttft,
                                                    "tpot_s": settings.real_cluster.slo.tpot}},
    }
    return result


def plot(path: str | Path, result: dict[str, Any]) -> None:
    """Rank skew (real CPU; modelled accelerator), then SLO attainment and p99 TTFT over the rate
    grid per policy (simulated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    titles = {"real": "REAL (this CPU): decode step, rank skew", "sim": "SIMULATED accelerator: decode step"}
    for axis, mode in zip(axes[:2], ("real", "sim"), strict=True):
        rows = [r for r in result["rank_skew"] if r["mode"] == mode]
        if not rows:
            axis.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=axis.transAxes)
            axis.set_title(titles[mode], fontsize=10)
            continue
        cases = list(dict.fromkeys(r["case"] for r in rows))
        for k, kernel in enumerate(("sgmv", "padded")):
            values = [next(r["step_ms_p50"] for r in rows if r["case"] == c and r["kernel"] == kernel) for c in cases]
            axis.bar([i + (k - 0.5) * 0.38 for i in range(len(cases))], values, width=0.36,
                     label="SGMV (own rank)" if kernel == "sgmv" else "padded (largest rank)")
        axis.set_xticks(range(len(cases)), cases, fontsize=8)
        axis.set_ylabel("median step (ms)")
        axis.set_title(titles[mode], fontsize=10)
        axis.legend(fontsize=8)
    grid = result["grid"]
    for policy in dict.fromkeys(g["policy"] for g in grid):
        rows = [g for g in grid if g["policy"] == policy and g["instances"] == result["settings"]["sim"]["instances"]]
        axes[2].plot([g["rate_scale"] for g in rows], [g["slo_attainment"] for g in rows], "o-", label=policy)
        axes[3].plot([g["rate_scale"] for g in rows], [g["ttft_ms_p99"] for g in rows], "o-", label=policy)
    axes[2].axhline(result["settings"]["slo"]["attainment"], color="grey", ls="--", lw=0.8)
    axes[2].set_ylabel("SLO attainment")
    axes[2].set_title("SIMULATED: SLO attainment", fontsize=10)
    axes[3].set_ylabel("p99 TTFT (ms)")
    axes[3].set_yscale("log")
    axes[3].set_title("SIMULATED: p99 TTFT", fontsize=10)
    for axis in axes[2:]:
        axis.set_xlabel("arrival rate (x the Azure conversation trace)")
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
