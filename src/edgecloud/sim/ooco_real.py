"""The real side of ``edgecloud bench ooco``: a CPU cluster of the local model
(``edgecloud cluster serve`` with strict and relaxed pools, the Batch API on), per policy: the
offline batch submitted through the OpenAI Batch API with the official client, and the online
trace replayed over HTTP by the serving benchmark's client while the batch runs.

Offline tokens/s is counted by the instances themselves: the prompt and generated tokens they
computed during the online replay (``edgecloud_instance_prompt_tokens`` and ``..._generation_
tokens``), less the online requests' own. The SLOs are set from the idle cluster: the same online
replay on ``separate`` with no batch, its p99 TTFT and TPOT times ``slo_factor``.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgecloud.bench.arrivals import trace_arrivals
from edgecloud.bench.client import Endpoint
from edgecloud.bench.metrics import RequestRecord
from edgecloud.bench.runner import run_requests
from edgecloud.bench.traces import read_trace
from edgecloud.bench.workload import BenchRequest, LengthScaling, PromptVocab, trace_workload
from edgecloud.cluster.ooco import STRICT, Roofline, perf_model_from_files
from edgecloud.llm.config import EngineConfig
from edgecloud.llm.model_source import resolve_model
from edgecloud.sim.ooco_bench import OOCO_POLICIES, POLICIES, SimOOCOSettings, flex_chunks
from edgecloud.sim.real import RealCluster, metric_values


@dataclass
class RealOOCOSettings:
    engine: EngineConfig
    hardware: str  # a profile from `edgecloud sim calibrate` (the ooco policy's roofline model)
    strict: int = 1
    relaxed: int = 2
    online_trace: str = "../shared/traces/azure_llm_2023_conv.csv"
    offline_trace: str = "../shared/traces/azure_llm_2023_code.csv"
    num_online: int = 120
    time_scale: float = 0.25  # the online trace's arrival times multiplied by this (4x its rate)
    scaling: LengthScaling = field(default_factory=lambda: LengthScaling(1 / 32, 1 / 16))
    offline_lines: int = 3000
    batch_concurrency: int = 48
    slo_factor: float = 2.0
    ttft_slo_ms: float | None = None  # None: from the idle cluster
    tpot_slo_ms: float | None = None
    policies: Sequence[str] = POLICIES
    seed: int = 0

    @property
    def cluster(self) -> str:
        return (f"{self.strict + self.relaxed} CPU instances ({self.strict} strict + {self.relaxed} relaxed) of "
                f"{self.engine.model or 'the demo model'}, {self.engine.num_threads or 1} thread each")


def cluster_config(settings: RealOOCOSettings, policy: str, ttft_ms: float, tpot_ms: float) -> str:
    """The TOML instance file of one case (offline tokens per step per pool as ``flex_chunks``
    sets them for the simulated cases)."""
    e = settings.engine
    options = ""
    model_dir = resolve_model(e.model).directory
    perf = perf_model_from_files(settings.hardware, model_dir)
    chunk = flex_chunks(SimOOCOSettings(ttft_slo_ms=ttft_ms if math.isfinite(ttft_ms) else 1e9), policy, perf,
                        e.max_num_batched_tokens)
    if policy == "ooco" and math.isfinite(tpot_ms):
        # A real engine takes no step-budget hook from an instance file: its strict pool gets the
        # roofline's largest chunk within half of slack x TPOT (the other half for the decodes).
        chunk[STRICT] = Roofline(perf).prefill_chunk_within(0.9 * tpot_ms / 2000, e.max_num_batched_tokens)
    if policy in OOCO_POLICIES:
        options = (f'options = {{ hardware = "{Path(settings.hardware).resolve()}", model = "{model_dir}", '
                   f"tpot_slo_ms = {tpot_ms} }}\n")
    lines = [f'[router]\npolicy = "{policy}"\n{options}', "[defaults]",
             f'model = "{e.model}"', f'dtype = "{e.dtype}"', f"threads = {e.num_threads or 1}",
             f"kv_cache_memory_mb = {e.kv_cache_memory_mb}", f"block_size = {e.block_size}",
             f"max_num_seqs = {e.max_num_seqs}", f"max_num_batched_tokens = {e.max_num_batched_tokens}",
             f"seed = {e.seed}", ""]
    for pool, count in (("strict", settings.strict), ("relaxed", settings.relaxed)):
        lines += ["[[instance]]", f'name = "{pool}"', f'pool = "{pool}"', f"count = {count}"]
        if chunk[pool] is not None:
            lines.append(f"flex_max_batched_tokens = {chunk[pool]}")
        lines.append("")
    return "\n".join(lines)


def batch_file(settings: RealOOCOSettings, vocab: PromptVocab, model: str) -> bytes:
    """The offline batch: completions with the offline trace's (scaled) lengths, cycled."""
    trace = read_trace(settings.offline_trace)
    out = io.StringIO()
    k = 0
    while k < settings.offline_lines:
        for req in trace_workload(vocab, trace[: settings.offline_lines - k], settings.scaling,
                                  seed=settings.seed + 1 + k):
            body = {"model": model, "prompt": list(req.prompt_ids), "max_tokens": req.output_len,
                    "temperature": 0.0, "ignore_eos": True}
            out.write(json.dumps({"custom_id": f"offline-{k}", "method": "POST", "url": "/v1/completions",
                                  "body": body}) + "\n")
            k += 1
    return out.getvalue().encode()


def _tokens(cluster: RealCluster) -> float:
    text = cluster.metrics()
    return (sum(metric_values(text, "edgecloud_instance_prompt_tokens_total").values())
            + sum(metric_values(text, "edgecloud_instance_generation_tokens_total").values()))


def _preemptions(cluster: RealCluster) -> float:
    return sum(metric_values(cluster.metrics(), "edgecloud_instance_num_preemptions_total").values())


def online_summary(records: Sequence[RequestRecord], ttft_ms: float, tpot_ms: float) -> dict[str, Any]:
    n = len(records)
    ttft_ok = [r.ok and r.ttft is not None and r.ttft * 1000 <= ttft_ms for r in records]
    tpot_ok = [r.ok and (r.tpot is None or r.tpot * 1000 <= tpot_ms) for r in records]
    ttfts = [r.ttft for r in records if r.ok and r.ttft is not None]
    tpots = [r.tpot for r in records if r.ok and r.tpot is not None]
    return {
        "slo_attainment": sum(a and b for a, b in zip(ttft_ok, tpot_ok, strict=True)) / n if n else math.nan,
        "ttft_attainment": sum(ttft_ok) / n if n else math.nan,
        "tpot_attainment": sum(tpot_ok) / n if n else math.nan,
        "online_ttft_ms_p50": float(np.percentile(ttfts, 50) * 1000) if ttfts else None,
        "online_ttft_ms_p99": float(np.percentile(ttfts, 99) * 1000) if ttfts else None,
        "online_tpot_ms_p50": float(np.percentile(tpots, 50) * 1000) if tpots else None,
        "online_tpot_ms_p99": float(np.percentile(tpots, 99) * 1000) if tpots else None,
        "online_failed": sum(not r.ok for r in records),
    }


def run_real_case(settings: RealOOCOSettings, policy: str, requests: Sequence[BenchRequest],
                  arrivals: Sequence[float], vocab: PromptVocab | None, ttft_ms: float,
                  tpot_ms: float) -> tuple[dict[str, Any], list[RequestRecord]]:
    """One policy with the batch running (``vocab`` given: its prompts), or the idle cluster."""
    import openai

    with tempfile.TemporaryDirectory(prefix="edgecloud-ooco-") as tmp:
        config = Path(tmp) / "cluster.toml"
        config.write_text(cluster_config(settings, policy, ttft_ms, tpot_ms))
        args = ["--config", str(config), "--batch-dir", str(Path(tmp) / "batches"),
                "--batch-concurrency", str(settings.batch_concurrency), "--max-waiting", "4096"]
        with RealCluster(args) as cluster:
            model = cluster.get_json("/v1/models")["data"][0]["id"]
            client = openai.OpenAI(base_url=f"{cluster.base_url}/v1", api_key="unused", max_retries=0)
            batch_id = None
            if vocab is not None:
                batch = batch_file(settings, vocab, model)
                uploaded = client.files.create(file=("offline.jsonl", batch), purpose="batch")
                batch_id = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/completions",
                                                 completion_window="24h").id
                time.sleep(3.0)  # the batch ramps up before the online window opens
            before_tokens, before_preempt, start = _tokens(cluster), _preemptions(cluster), time.monotonic()
            records = asyncio.run(run_requests(Endpoint(cluster.base_url, model), requests, arrivals,
                                               timeout_s=300.0))
            span = time.monotonic() - start
            done_tokens, preemptions = _tokens(cluster) - before_tokens, _preemptions(cluster) - before_preempt
            progress = None
            if batch_id is not None:
                progress = client.batches.retrieve(batch_id).request_counts.model_dump()
                client.batches.cancel(batch_id)
    online_tokens = sum((r.prompt_tokens or 0) + r.output_tokens for r in records)
    offline = max(0.0, done_tokens - online_tokens) if vocab is not None else 0.0
    return {
        "mode": "real", "simulated": False, "cluster": settings.cluster, "policy": policy,
        "offline_tok_s": offline / span, "window_s": span, "batch_progress": progress,
        **online_summary(records, ttft_ms, tpot_ms), "preemptions": preemptions,
        "ttft_slo_ms": ttft_ms, "tpot_slo_ms": tpot_ms,
    }, list(records)


def bench_real(settings: RealOOCOSettings, progress: Any = None) -> list[dict[str, Any]]:
    directory = resolve_model(settings.engine.model).directory
    vocab = PromptVocab.from_dir(directory)
    trace = read_trace(settings.online_trace, limit=settings.num_online)
    requests = trace_workload(vocab, trace, settings.scaling, seed=settings.seed)
    arrivals = trace_arrivals([r.arrival_s for r in trace], settings.time_scale)
    rows = []
    ttft_ms, tpot_ms = settings.ttft_slo_ms, settings.tpot_slo_ms
    if ttft_ms is None or tpot_ms is None:
        idle, records = run_real_case(settings, "separate", requests, arrivals, None, math.inf, math.inf)
        ttft_ms = ttft_ms or settings.slo_factor * idle["online_ttft_ms_p99"]
        tpot_ms = tpot_ms or settings.slo_factor * idle["online_tpot_ms_p99"]
        idle.update(policy="idle (separate, no batch)", ttft_slo_ms=ttft_ms, tpot_slo_ms=tpot_ms,
                    **online_summary(records, ttft_ms, tpot_ms))
        rows.append(idle)
        if progress is not None:
            progress(idle)
    for policy in settings.policies:
        row, _ = run_real_case(settings, policy, requests, arrivals, vocab, ttft_ms, tpot_ms)
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows
