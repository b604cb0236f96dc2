"""The real side of ``bench lora``: a cluster of CPU engine instances on this machine (one process
each, every instance registered with every adapter, ``max_cpu_loras`` of them kept in host memory
and the rest read from disk again when a request needs them), driven through the cluster's own
front end (``ClusterEngine``: the router and the policy under test) with a trace's arrivals and
adapters of a drifting Zipf popularity.

The simulator's rows stand for an accelerator cluster; these are measured, on the demo model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgecloud.bench.metrics import RequestRecord, Slo, summarize
from edgecloud.cluster.config import InstanceSpec
from edgecloud.cluster.frontend import ClusterEngine
from edgecloud.cluster.instance import Instance
from edgecloud.cluster.policies import make_policy
from edgecloud.llm.config import EngineConfig, ModelConfig
from edgecloud.llm.lora.cost import LoRACostModel
from edgecloud.llm.model_source import resolve_model
from edgecloud.llm.outputs import OutputKind
from edgecloud.llm.perf_model import HardwareProfile, ModelProfile
from edgecloud.llm.sampling_params import SamplingParams
from edgecloud.sim.lora import AdapterPopulation


@dataclass(frozen=True)
class RealLoRARequest:
    arrival_s: float
    prompt_token_ids: list[int]
    output_len: int
    adapter_id: str


@dataclass
class RealLoRASettings:
    model: str = "demo"
    instances: int = 3
    threads: int = 1
    max_loras: int = 2
    max_cpu_loras: int = 4
    kv_cache_memory_mb: float = 64.0
    async_loads: bool = True  # the engine's lora_async_loads


def rank_cost_of(model_dir: Path) -> float:
    """Extra base-model FLOPs per token per unit of adapter rank (all seven projections)."""
    profile = ModelProfile.from_config(ModelConfig.from_file(model_dir / "config.json"), 4.0)
    return LoRACostModel.for_model(HardwareProfile("cpu", 1.0, 1.0), profile).rank_cost(profile)


def real_workload(trace: Sequence[Any], population: AdapterPopulation, input_len: int, output_len: int,
                  vocab: int, seed: int = 0) -> list[RealLoRARequest]:
    """The trace's arrival times (``trace``: ``TraceRequest``s, already scaled), prompts of
    ``input_len`` random tokens, ``output_len`` tokens out, adapters from ``population``."""
    rng = np.random.default_rng(seed)
    adapters = population.assign([r.arrival_s for r in trace])
    return [RealLoRARequest(r.arrival_s, rng.integers(3, vocab, input_len).tolist(), output_len, a)
            for r, a in zip(trace, adapters, strict=True)]


async def _replay(engine: ClusterEngine, workload: Sequence[RealLoRARequest]) -> list[RequestRecord]:
    start = time.monotonic()
    records = [RequestRecord(index=i, send_time=r.arrival_s, prompt_tokens=len(r.prompt_token_ids),
                             expected_output_tokens=r.output_len) for i, r in enumerate(workload)]

    async def one(i: int, req: RealLoRARequest) -> None:
        await asyncio.sleep(max(0.0, start + req.arrival_s - time.monotonic()))
        record = records[i]
        record.send_time = time.monotonic() - start
        params = SamplingParams(temperature=0.0, max_tokens=req.output_len, ignore_eos=True)
        try:
            async for out in engine.generate(req.prompt_token_ids, params, f"q{i}", adapter_id=req.adapter_id,
                                             output_kind=OutputKind.DELTA):
                if out.error is not None:
                    raise out.error
                new = sum(len(c.token_ids) for c in out.outputs)
                if new:
                    record.chunk_times.append(time.monotonic() - start)
                    record.output_tokens += new
        except Exception as error:  # a failed request is a record with its error, never a crash
            record.error = type(error).__name__
            record.error_detail = str(error)
        record.end_time = time.monotonic() - start

    await asyncio.gather(*(one(i, r) for i, r in enumerate(workload)))
    return records


def run_real_policy(settings: RealLoRASettings, adapters: dict[str, tuple[str, int]], policy: str,
                    workload: Sequence[RealLoRARequest], slo: Slo) -> dict[str, Any]:
    """One policy on a fresh cluster; ``adapters``: name -> (directory, rank)."""
    model_dir = Path(resolve_model(settings.model).directory)
    engine_config = EngineConfig(
        model=settings.model, dtype="float32", num_threads=settings.threads,
        kv_cache_memory_mb=settings.kv_cache_memory_mb, max_loras=settings.max_loras,
        max_lora_rank=max(rank for _, rank in adapters.values()), max_cpu_loras=settings.max_cpu_loras,
        lora_modules=tuple((name, path) for name, (path, _) in adapters.items()),
        lora_async_loads=settings.async_loads,
    )
    options: dict[str, Any] = {}
    if policy == "loraserve":
        options = {"ranks": {n: r for n, (_, r) in adapters.items()}, "rank_cost": rank_cost_of(model_dir),
                   "rebalance_s": 5.0, "window_s": 10.0, "spill_tokens": 4 * engine_config.max_num_batched_tokens}
    elif policy == "affinity":
        options = {"capacity": settings.max_cpu_loras}

    async def run() -> list[RequestRecord]:
        specs = [InstanceSpec(f"mixed{i}", dataclasses.replace(engine_config)) for i in range(settings.instances)]
        engine = ClusterEngine([Instance(s, "local") for s in specs], make_policy(policy, **options))
        await engine.start()
        try:
            return await _replay(engine, workload)
        finally:
            await engine.shutdown()

    records = asyncio.run(run())
    summary = summarize(records, slo)
    return {
        "mode": "real", "policy": policy, "instances": settings.instances,
        "throughput_tok_s": summary.output_token_throughput, "slo_attainment": summary.slo_attainment,
        "ttft_ms_p99": summary.ttft.p99 * 1000, "ttft_ms_p50": summary.ttft.p50 * 1000,
        "tpot_ms_p99": summary.tpot.p99 * 1000, "completed": summary.completed, "failed": summary.failed,
        "errors": summary.errors, "requests": len(records), "min_instances_for_slo": None,
        "cluster": f"{settings.instances} CPU instances ({settings.model}, {settings.threads} thread each)",
    }
