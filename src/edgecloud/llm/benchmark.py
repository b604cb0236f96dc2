"""`edgecloud bench engine`: our engine against transformers' ``generate`` on the same requests,
and this machine's roofline bound for the batches the engine ran.

Baseline: transformers with padded static batches of the same requests in the same order and of
the same batch size (each batch runs until its longest request is done — what static batching
costs). Ours: all requests submitted at once, continuous batching with at most ``batch_size``
sequences in flight. Both count only the output tokens the requests asked for.

Roofline: per engine step, time >= max(bytes / bandwidth, flops / peak) (``PerfModel.roofline_time``:
bytes = layer and LM-head weights + KV read and written; flops = 2 x layer params x tokens + the LM
head for sampled rows + attention); bandwidth and matmul peak are measured here, with the same thread
count, just before the runs.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from edgecloud.llm.config import EngineConfig
from edgecloud.llm.engine import LLMEngine
from edgecloud.llm.perf_model import HardwareProfile, ModelProfile, PerfModel, StepShape
from edgecloud.llm.sampling_params import SamplingParams
from edgecloud.llm.scheduler import SchedulerOutput


@dataclass
class MachinePeaks:
    memory_gb_s: float
    matmul_gflop_s: float


@dataclass
class EngineBenchResult:
    model: str
    num_prompts: int
    batch_size: int
    threads: int
    dtype: str
    input_tokens: int
    output_tokens: int
    engine_s: float
    hf_s: float
    engine_tok_s: float
    hf_tok_s: float
    speedup: float
    roofline_s: float
    roofline_tok_s: float
    roofline_fraction: float
    memory_gb_s: float
    matmul_gflop_s: float
    engine_steps: int


def measure_peaks(dtype: torch.dtype, repeats: int = 5, min_seconds: float = 1.0) -> MachinePeaks:
    """Best streaming bandwidth (a 256 MiB copy) and square-matmul throughput (the best of torch's
    ``mm`` (MKL) and the oneDNN packed matmul the engine's linear layers use), each timed at least
    ``repeats`` times and for at least ``min_seconds``. Five calls (a tenth of a second) understated
    the peaks in two quiet runs here (21.5-22.9 GB/s, once 109 GFLOP/s, where other runs measured
    29-34 GB/s and 182-222 GFLOP/s and the decode that streams weights ran as fast; cause not found),
    and a peak understated that way overstates every fraction of it."""
    src = torch.ones(64 * 2**20, dtype=torch.float32)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() * src.element_size() / _best(lambda: dst.copy_(src), repeats, min_seconds)
    n = 1024
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    best_mm = _best(lambda: torch.mm(a, b), repeats, min_seconds)
    from edgecloud.llm.layers import packed

    if packed.available(dtype, torch.device("cpu")):  # the engine's own matmul path may be the faster one
        linear = torch.nn.Linear(n, n, bias=False, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(b.t())
        layer = packed.PackedLinear(linear)
        best_mm = min(best_mm, _best(lambda: layer(a), repeats, min_seconds))
    return MachinePeaks(memory_gb_s=bandwidth / 1e9, matmul_gflop_s=2 * n**3 / best_mm / 1e9)


def _best(fn: Callable[[], object], repeats: int, min_seconds: float) -> float:
    """The shortest of at least ``repeats`` timed calls spanning at least ``min_seconds``."""
    times: list[float] = []
    began = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - began < min_seconds:
        times.append(_timed(fn))
    return min(times)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def make_requests(
    num_prompts: int, input_len: tuple[int, int], output_len: tuple[int, int], vocab: int, seed: int
) -> list[tuple[list[int], int]]:
    rng = random.Random(seed)
    return [
        ([rng.randrange(2, vocab) for _ in range(rng.randint(*input_len))], rng.randint(*output_len))
        for _ in range(num_prompts)
    ]


class RooflineMeter:
    """Adds up the roofline time (``PerfModel.roofline_time``) of each step the engine runs."""

    def __init__(self, engine: LLMEngine, peaks: MachinePeaks) -> None:
        element = torch.tensor([], dtype=engine.core.dtype).element_size()
        hardware = HardwareProfile("this machine (measured)", peaks.matmul_gflop_s * 1e9, peaks.memory_gb_s * 1e9)
        self.perf = PerfModel(hardware, ModelProfile.from_config(engine.model_config, element))
        self.seconds = 0.0
        self.steps = 0

    def __call__(self, plan: SchedulerOutput) -> None:
        self.seconds += self.perf.roofline_time(
            StepShape(s.num_new_tokens, s.request.num_computed_tokens + s.num_new_tokens, s.samples)
            for s in plan.scheduled
        )
        self.steps += 1


def run_engine(
    engine: LLMEngine, requests: list[tuple[list[int], int]], meter: RooflineMeter | None = None
) -> float:
    engine.core.on_step = meter
    for i, (prompt, out_len) in enumerate(requests):
        engine.add_request(f"bench-{i}", prompt, SamplingParams(temperature=0.0, max_tokens=out_len, ignore_eos=True))
    start = time.perf_counter()
    while engine.has_unfinished():
        engine.step()
    elapsed = time.perf_counter() - start
    engine.core.on_step = None
    return elapsed


def run_transformers(
    model_dir: Path, requests: list[tuple[list[int], int]], batch_size: int, dtype: torch.dtype
) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    pad = 0
    start = time.perf_counter()
    with torch.inference_mode():
        for first in range(0, len(requests), batch_size):
            batch = requests[first : first + batch_size]
            width = max(len(p) for p, _ in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.int64)
            mask = torch.zeros_like(ids)
            for row, (prompt, _) in enumerate(batch):  # left padding, as generation needs
                ids[row, width - len(prompt) :] = torch.tensor(prompt)
                mask[row, width - len(prompt) :] = 1
            longest = max(n for _, n in batch)
            model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=longest, min_new_tokens=longest,
                do_sample=False, pad_token_id=pad, eos_token_id=None,
            )
    return time.perf_counter() - start


def bench_engine(
    model: str,
    num_prompts: int,
    input_len: tuple[int, int],
    output_len: tuple[int, int],
    batch_size: int = 64,
    threads: int = 2,
    dtype: str = "float32",
    seed: int = 0,
    kv_cache_memory_mb: float = 1024,
    attention_backend: str = "paged",
    json_path: Path | None = None,
) -> EngineBenchResult:
    torch.set_num_threads(threads)
    engine = LLMEngine(EngineConfig(
        model=model, dtype=dtype, max_num_seqs=batch_size, kv_cache_memory_mb=kv_cache_memory_mb,
        max_num_batched_tokens=max(2048, input_len[1]), attention_backend=attention_backend, seed=seed,
    ))
    requests = make_requests(num_prompts, input_len, output_len, engine.model_config.vocab_size, seed)
    peaks = measure_peaks(engine.core.dtype)
    run_engine(engine, requests[: min(4, len(requests))])  # warm-up: allocator, kernels
    meter = RooflineMeter(engine, peaks)
    engine_s = run_engine(engine, requests, meter)
    hf_s = run_transformers(engine.model_dir, requests, batch_size, engine.core.dtype)
    out_tokens = sum(n for _, n in requests)
    result = EngineBenchResult(
        model=engine.model_name, num_prompts=num_prompts, batch_size=batch_size, threads=threads,
        dtype=str(engine.core.dtype).removeprefix("torch."), input_tokens=sum(len(p) for p, _ in requests),
        output_tokens=out_tokens, engine_s=engine_s, hf_s=hf_s, engine_tok_s=out_tokens / engine_s,
        hf_tok_s=out_tokens / hf_s, speedup=hf_s / engine_s, roofline_s=meter.seconds,
        roofline_tok_s=out_tokens / meter.seconds, roofline_fraction=meter.seconds / engine_s,
        memory_gb_s=peaks.memory_gb_s, matmul_gflop_s=peaks.matmul_gflop_s, engine_steps=meter.steps,
    )
    if json_path is not None:
        json_path.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result
