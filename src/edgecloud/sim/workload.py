"""Workloads for the simulator: a trace's requests (Azure LLM 2023, Mooncake; read by
``edgecloud.bench.traces``) as ``SimRequest``s, the same prompts a real replay sends, and a
trace's arrival rate scaled up while its pattern over the hour is kept.

Prompts are token ids. Without a tokenizer (simulated models) they are drawn at random, except
that Mooncake's ``hash_ids`` become real shared prefixes exactly as ``bench serve`` builds them:
one fixed block of tokens per hash id, so requests whose lists share a head share that prefix and
the simulated prefix cache (keyed by the same block keys as the engine's) reuses it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from edgecloud.bench.traces import MOONCAKE_BLOCK_TOKENS, TraceRequest
from edgecloud.bench.workload import BenchRequest, LengthScaling
from edgecloud.sim.simulator import SimRequest

# Token ids of simulated prompts: any ids below this (the keys hash them as 32-bit integers).
SIM_VOCAB = 32000


def scale_rate(trace: Sequence[TraceRequest], factor: float, seed: int = 0) -> list[TraceRequest]:
    """``factor`` times the requests over the same span, the arrival pattern kept: each request
    stands for ``factor`` requests (the integer part always, the fraction by chance), the extra
    ones placed uniformly between it and the next arrival, with the same lengths. The c-th copy of
    the trace is another population of users: its Mooncake hash ids are the original's moved to a
    range of their own, so copies share prefixes among themselves as the trace does, not with the
    original (which would make every copy a cache hit). The last request has no next arrival: its
    copies spread over the trace's mean gap (with none, ``factor`` requests arrived at one instant:
    at x279 a burst of 279 equal prompts, which alone decided where OOCO's load 1.0x fell, #19)."""
    if not factor > 0:
        raise ValueError(f"rate factor must be > 0, got {factor}")
    rng = np.random.default_rng(seed)
    whole, fraction = int(factor), factor - int(factor)
    span = 1 + max((h for r in trace for h in r.hash_ids), default=0)
    mean_gap = (trace[-1].arrival_s - trace[0].arrival_s) / (len(trace) - 1) if len(trace) > 1 else 0.0
    out: list[TraceRequest] = []
    for i, req in enumerate(trace):
        gap = trace[i + 1].arrival_s - req.arrival_s if i + 1 < len(trace) else mean_gap
        copies = whole + (1 if rng.random() < fraction else 0)
        for c in range(copies):
            offset = 0.0 if c == 0 else float(rng.random()) * gap
            ids = tuple(h + c * span for h in req.hash_ids)
            out.append(TraceRequest(req.arrival_s + offset, req.input_len, req.output_len, ids))
    out.sort(key=lambda r: r.arrival_s)
    return out


def trace_requests(
    trace: Sequence[TraceRequest],
    scaling: LengthScaling | None = None,
    time_scale: float = 1.0,
    hash_block_tokens: int | None = None,
    max_len: int | None = None,
    seed: int = 0,
) -> list[SimRequest]:
    """``SimRequest``s with a trace's (scaled) lengths and arrival times (× ``time_scale``);
    prompts longer than ``max_len - output`` are cut so that each fits the model's context."""
    return list(iter_trace_requests(trace, scaling, time_scale, hash_block_tokens, max_len, seed))


def iter_trace_requests(
    trace: Iterable[TraceRequest],
    scaling: LengthScaling | None = None,
    time_scale: float = 1.0,
    hash_block_tokens: int | None = None,
    max_len: int | None = None,
    seed: int = 0,
) -> Iterator[SimRequest]:
    """``trace_requests`` one at a time: each prompt is built when the simulator reads it (a
    streamed workload holds only the requests in flight)."""
    scaling = scaling or LengthScaling()
    if hash_block_tokens is None:
        hash_block_tokens = max(1, round(MOONCAKE_BLOCK_TOKENS * scaling.input_scale))
    rng = np.random.default_rng(seed)
    blocks: dict[int, np.ndarray] = {}
    for record in trace:
        length = scaling.input(record.input_len)
        output = scaling.output(record.output_len)
        if max_len is not None:
            output = min(output, max_len - 2)
            length = min(length, max_len - output)
        parts: list[np.ndarray] = []
        have = 0
        for hash_id in record.hash_ids:
            if have >= length:
                break
            block = blocks.get(hash_id)
            if block is None:
                block = blocks[hash_id] = np.random.default_rng([seed, hash_id]).integers(
                    0, SIM_VOCAB, hash_block_tokens)
            parts.append(block)
            have += len(block)
        if have < length:
            parts.append(rng.integers(0, SIM_VOCAB, length - have))
        ids = np.concatenate(parts)[:length] if parts else np.zeros(0, dtype=np.int64)
        yield SimRequest(record.arrival_s * time_scale, ids.tolist(), output)


def bench_requests(requests: Sequence[BenchRequest], arrivals: Sequence[float]) -> list[SimRequest]:
    """The prompts a real replay (``edgecloud bench serve``'s workload) sends, at its arrival times."""
    if len(requests) != len(arrivals):
        raise ValueError(f"{len(requests)} requests but {len(arrivals)} arrival times")
    return [SimRequest(t, list(r.prompt_ids), r.output_len) for r, t in zip(requests, arrivals, strict=True)]
