"""`edgecloud bench engine --peer llama.cpp --model FILE.gguf`: our engine beside llama.cpp.

Both run the same GGUF file with the same prompts (token ids), the same number of threads and
greedy decoding, one after the other in one process, at 1, 8 and 32 concurrent streams. llama.cpp
(through llama-cpp-python, the optional ``peer`` extra) runs one sequence at a time, as its Python
API does: a stream's prompt in one ``eval``, then one token per ``eval``; its aggregate tokens/s
at S streams is that of the S sequences run back to back. Our engine takes all S requests at once
(continuous batching). Prefill tokens/s count prompt tokens over the time until every stream has
its first token; decode tokens/s count the later tokens over the rest.

Each engine configuration (``--engine-quantization``: ``int4`` keeps the file's Q4_1 blocks,
``int8`` Q8_0, ``none`` the dequantized dense weights in ``--dtype``) runs every stream count. A
step breakdown of one-stream and S-stream decode (layers, LM head, sampling, host overhead: the
rest of the step — scheduling, input building, output handling) comes from timing hooks on the
model, and the one-stream decode of every configuration is set against this machine's roofline
(``PerfModel.roofline_time`` with bytes as each configuration stores its weights).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecloud.llm.bench_tiers import cpu_model
from edgecloud.llm.benchmark import MachinePeaks, make_requests, measure_peaks
from edgecloud.llm.config import EngineConfig
from edgecloud.llm.engine import LLMEngine
from edgecloud.llm.perf_model import HardwareProfile, ModelProfile, PerfModel, StepShape
from edgecloud.llm.sampling_params import SamplingParams
from edgecloud.llm.scheduler import SchedulerOutput

PEERS = ("llama.cpp",)


@dataclass
class StepBreakdown:
    """Median milliseconds of one decode step, by part."""

    streams: int
    step_ms: float
    layers_ms: float  # with the LM head where the one-token decoder ran it in the same call
    lm_head_ms: float | None  # None: run inside the one-token decoder's call (in layers_ms)
    sampling_ms: float
    host_ms: float


@dataclass
class PeerCase:
    streams: int
    engine_dtype: str
    peer_dtype: str
    engine_decode_tok_s: float
    peer_decode_tok_s: float
    engine_prefill_tok_s: float
    peer_prefill_tok_s: float
    decode_ratio: float
    prefill_ratio: float


@dataclass
class PeerBenchResult:
    model: str
    cpu: str
    cpu_flags: list[str]
    threads: int
    peer: str
    peer_version: str
    prompt_tokens: int
    output_tokens: int
    memory_gb_s: float
    matmul_gflop_s: float
    load_average_before: tuple[float, float, float]
    load_average_after: tuple[float, float, float]
    cases: list[PeerCase] = field(default_factory=list)
    breakdown: dict[str, list[StepBreakdown]] = field(default_factory=dict)  # engine dtype -> per streams
    roofline_fraction_1_stream: dict[str, float] = field(default_factory=dict)  # engine dtype -> fraction
    weight_bits: dict[str, float] = field(default_factory=dict)  # engine dtype (and the peer) -> bits/weight
    perplexity: dict[str, Any] = field(default_factory=dict)


def cpu_flags() -> list[str]:
    """The SIMD flags that decide CPU kernels (AVX2, AVX-512 and its bf16/VNNI parts, AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
    except OSError:
        pass
    return [platform.machine()]


@dataclass
class _Phase:
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_steps: list[float] = field(default_factory=list)


def _run_engine(engine: LLMEngine, prompts: list[list[int]], out_len: int, tag: str) -> _Phase:
    phase = _Phase()
    params = SamplingParams(temperature=0.0, max_tokens=out_len, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(f"{tag}-{i}", prompt, params)
    has_prefill = [False]

    def classify(plan: SchedulerOutput) -> None:
        has_prefill[0] = any(s.num_new_tokens > 1 or not s.samples for s in plan.scheduled)

    engine.core.on_step = classify
    while engine.has_unfinished():
        start = time.perf_counter()
        engine.step()
        elapsed = time.perf_counter() - start
        if has_prefill[0]:
            phase.prefill_s += elapsed
        else:
            phase.decode_s += elapsed
            phase.decode_steps.append(elapsed)
    engine.core.on_step = None
    return phase


class _PartTimer:
    """Forward hooks timing the LM head and the whole model, and a wrapper timing the sampler."""

    def __init__(self, engine: LLMEngine) -> None:
        runner = engine.core.executor
        self.runner = runner
        self.model_s: list[float] = []
        self.head_s: list[float] = []
        self.sample_s: list[float] = []
        self._t: dict[str, float] = {}
        model = runner.model
        self.handles = [
            model.register_forward_pre_hook(lambda *_: self._start("model")),
            model.register_forward_hook(lambda *_: self._stop("model", self.model_s)),
            model.lm_head.register_forward_pre_hook(lambda *_: self._start("head")),
            model.lm_head.register_forward_hook(lambda *_: self._stop("head", self.head_s)),
        ]
        self._heads_before = 0
        self.sampler = runner.sampler

        def timed_sampler(*args: Any) -> Any:
            start = time.perf_counter()
            result = self.sampler(*args)
            self.sample_s.append(time.perf_counter() - start)
            return result

        runner.sampler = timed_sampler

    def _start(self, key: str) -> None:
        if key == "model":
            self._heads_before = len(self.head_s)
        self._t[key] = time.perf_counter()

    def _stop(self, key: str, into: list[float]) -> None:
        into.append(time.perf_counter() - self._t[key])
        if key == "model" and len(self.head_s) == self._heads_before:  # the head ran inside the model's call
            self.head_s.append(float("nan"))

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.runner.sampler = self.sampler


def step_breakdown(engine: LLMEngine, prompts: list[list[int]], out_len: int) -> StepBreakdown:
    """Runs the prompts, then times each part of every decode step (medians)."""
    timer = _PartTimer(engine)
    try:
        phase = _run_engine(engine, prompts, out_len, f"breakdown{len(prompts)}")
    finally:
        timer.close()
    decode = len(phase.decode_steps)
    model, head, sample = (np.asarray(x[-decode:]) for x in (timer.model_s, timer.head_s, timer.sample_s))
    steps = np.asarray(phase.decode_steps)
    inside = bool(np.isnan(head).all())  # the one-token decoder ran the head with the layers
    head = np.zeros_like(head) if inside else head
    return StepBreakdown(
        streams=len(prompts), step_ms=1e3 * float(np.median(steps)),
        layers_ms=1e3 * float(np.median(model - head)), lm_head_ms=None if inside else 1e3 * float(np.median(head)),
        sampling_ms=1e3 * float(np.median(sample)), host_ms=1e3 * float(np.median(steps - model - sample)),
    )


def _peer_llama_cpp(
    gguf: Path, prompts: list[list[int]], out_len: int, threads: int, context: int
) -> tuple[_Phase, str]:
    try:
        import llama_cpp
    except ImportError:
        raise RuntimeError(
            "the llama.cpp peer needs llama-cpp-python: pip install -e '.[peer]' (it compiles llama.cpp, "
            "about 11 minutes on 2 cores)"
        ) from None
    llm = llama_cpp.Llama(
        model_path=str(gguf), n_ctx=context, n_batch=512, n_threads=threads, n_threads_batch=threads,
        verbose=False,
    )
    phase = _Phase()
    for prompt in prompts:
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        phase.prefill_s += time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(out_len - 1):
            llm.eval([token])
            token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        phase.decode_s += time.perf_counter() - start
    llm.close()
    return phase, str(llama_cpp.__version__)


def _engine(gguf: Path, quantization: str, dtype: str, streams: int, context: int) -> tuple[LLMEngine, str, float]:
    """An engine on the GGUF file; returns it, its dtype label and its weights' bits per weight."""
    engine = LLMEngine(EngineConfig(
        model=str(gguf), dtype=dtype, max_num_seqs=max(streams, 1), kv_cache_memory_mb=512,
        max_num_batched_tokens=2048, max_model_len=context, seed=0,
    ))
    model = engine.core.executor.model
    if quantization == "none":
        element = torch.tensor([], dtype=engine.core.dtype).element_size()
        return engine, str(engine.core.dtype).removeprefix("torch."), 8.0 * element
    from edgecloud.llm.quant import quantize_model

    report = quantize_model(model, quantization, gguf)
    if quantization == "int4":
        from edgecloud.llm.quant.linear import C_KERNEL_MAX_ROWS, activation_bits

        bits = activation_bits()
        few = "int8" if bits == 8 else "bf16"  # without VNNI Int4Linear keeps torch's bf16 kernel
        arithmetic = f"{few} x int4 up to {C_KERNEL_MAX_ROWS} rows, bf16 beyond" if few != "bf16" else "bf16"
    else:
        arithmetic = str(dtype)
    label = f"{quantization} ({report.block_format} weights; {arithmetic})"
    return engine, label, report.bits_per_weight


def _roofline_fraction(
    engine: LLMEngine, peaks: MachinePeaks, bits: float, prompt_len: int, out_len: int, decode_s: float
) -> float:
    """Roofline time of a one-stream decode over its measured time, with weights at ``bits`` each and
    KV in the engine's dtype."""
    kv_bytes = torch.tensor([], dtype=engine.core.dtype).element_size()
    hardware = HardwareProfile("this machine (measured)", peaks.matmul_gflop_s * 1e9, peaks.memory_gb_s * 1e9)
    perf = PerfModel(hardware, ModelProfile.from_config(engine.model_config, bits / 8, kv_bytes))
    bound = sum(perf.roofline_time([StepShape(1, prompt_len + i + 1)]) for i in range(1, out_len))
    return bound / decode_s


def bench_peer(
    gguf: Path,
    peer: str = "llama.cpp",
    streams: tuple[int, ...] = (1, 8, 32),
    prompt_len: int = 128,
    output_len: int = 128,
    threads: int = 2,
    quantizations: tuple[str, ...] = ("int4", "none"),
    dtype: str = "float32",
    seed: int = 0,
    json_path: Path | None = None,
    perplexity_text: Path | None = None,
    perplexity_tokens: int = 512,
) -> PeerBenchResult:
    if peer not in PEERS:
        raise ValueError(f"peer must be one of {PEERS}, got {peer!r}")
    torch.set_num_threads(threads)
    context = prompt_len + output_len + 16
    load_before = tuple(round(x, 2) for x in os.getloadavg())
    peaks = measure_peaks(torch.float32)
    probe = LLMEngine(EngineConfig(model=str(gguf), dtype="float32", max_num_seqs=1, kv_cache_memory_mb=16))
    vocab = probe.model_config.vocab_size
    del probe
    requests = make_requests(max(streams), (prompt_len, prompt_len), (output_len, output_len), vocab, seed)
    prompts = [p for p, _ in requests]
    result = PeerBenchResult(
        model=str(gguf), cpu=cpu_model(), cpu_flags=cpu_flags(), threads=threads, peer=peer, peer_version="",
        prompt_tokens=prompt_len, output_tokens=output_len, memory_gb_s=peaks.memory_gb_s,
        matmul_gflop_s=peaks.matmul_gflop_s, load_average_before=load_before,  # type: ignore[arg-type]
        load_average_after=load_before,  # type: ignore[arg-type]
    )
    peer_phases: dict[int, _Phase] = {}
    for s in streams:
        peer_phases[s], result.peer_version = _peer_llama_cpp(gguf, prompts[:s], output_len, threads, context)
    result.weight_bits["llama.cpp"] = _stored_bits(gguf)
    for quantization in quantizations:
        engine, label, bits = _engine(gguf, quantization, dtype, max(streams), context)
        result.weight_bits[label] = bits
        _run_engine(engine, prompts[: min(4, len(prompts))], 8, "warmup")
        result.breakdown[label] = []
        for s in streams:
            phase = _run_engine(engine, prompts[:s], output_len, f"s{s}")
            peer_phase = peer_phases[s]
            case = PeerCase(
                streams=s, engine_dtype=label, peer_dtype="GGUF as stored (Q4_1 layers, Q8_0 embeddings)",
                engine_decode_tok_s=s * (output_len - 1) / phase.decode_s,
                peer_decode_tok_s=s * (output_len - 1) / peer_phase.decode_s,
                engine_prefill_tok_s=s * prompt_len / phase.prefill_s,
                peer_prefill_tok_s=s * prompt_len / peer_phase.prefill_s,
                decode_ratio=peer_phase.decode_s / phase.decode_s,
                prefill_ratio=peer_phase.prefill_s / phase.prefill_s,
            )
            result.cases.append(case)
            if s == 1:
                result.roofline_fraction_1_stream[label] = _roofline_fraction(
                    engine, peaks, bits, prompt_len, output_len, phase.decode_s
                )
            if s in (1, max(streams)):
                result.breakdown[label].append(step_breakdown(engine, prompts[:s], min(output_len, 32)))
        if perplexity_text is not None:
            from edgecloud.llm.quant.perplexity import perplexity

            ids = engine.tokenizer.encode(perplexity_text.read_text())[:perplexity_tokens]
            window = min(256, context)  # the engine holds `context` positions
            result.perplexity[label] = perplexity(engine.core.executor, ids, window=window)
            if quantization == "int4":  # decoding multiplies with the one-row kernel: scored as decoding runs
                for path in ("modules", "stack"):
                    result.perplexity[f"{label}, one token a step ({path})"] = perplexity(
                        engine.core.executor, ids, window=window, path=path)
            result.perplexity["text"] = f"{perplexity_text.name}, first {len(ids)} tokens, windows of {window}"
        del engine
    result.load_average_after = tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[assignment]
    if json_path is not None:
        json_path.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result


def _stored_bits(gguf: Path) -> float:
    """Bits per weight of the file's tensors as stored."""
    from gguf import GGUFReader

    tensors = GGUFReader(gguf).tensors
    return 8 * sum(int(t.n_bytes) for t in tensors) / sum(int(np.prod(t.shape)) for t in tensors)
