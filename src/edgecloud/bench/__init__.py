"""Load generation and measurement shared by edgecloud's benchmarks: trace readers
(Azure LLM 2023, Mooncake), workloads with exact token lengths, arrival processes, a streaming
OpenAI-API client, metrics (TTFT, TPOT, ITL, e2e, throughput, goodput), reports, and the machine
record every benchmark prints (CPU, load at start and end, a warning when busy).

Exports load on first use, so a benchmark that needs only :class:`LoadWatch` does not import
the HTTP client and tokenizers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecloud.lazy_exports import lazy_getattr

_EXPORTS = {
    "gamma_arrivals": "edgecloud.bench.arrivals",
    "poisson_arrivals": "edgecloud.bench.arrivals",
    "trace_arrivals": "edgecloud.bench.arrivals",
    "Endpoint": "edgecloud.bench.client",
    "LoadWatch": "edgecloud.bench.machine",
    "MachineLoad": "edgecloud.bench.machine",
    "BenchSummary": "edgecloud.bench.metrics",
    "LatencyStats": "edgecloud.bench.metrics",
    "RequestRecord": "edgecloud.bench.metrics",
    "Slo": "edgecloud.bench.metrics",
    "summarize": "edgecloud.bench.metrics",
    "run_requests": "edgecloud.bench.runner",
    "TraceRequest": "edgecloud.bench.traces",
    "read_azure_csv": "edgecloud.bench.traces",
    "read_mooncake_jsonl": "edgecloud.bench.traces",
    "read_trace": "edgecloud.bench.traces",
    "BenchRequest": "edgecloud.bench.workload",
    "LengthScaling": "edgecloud.bench.workload",
    "PrefixTree": "edgecloud.bench.workload",
    "PromptVocab": "edgecloud.bench.workload",
    "random_workload": "edgecloud.bench.workload",
    "shared_prefix_workload": "edgecloud.bench.workload",
    "trace_workload": "edgecloud.bench.workload",
}

__all__ = [
    "BenchRequest",
    "BenchSummary",
    "Endpoint",
    "LatencyStats",
    "LengthScaling",
    "LoadWatch",
    "MachineLoad",
    "PrefixTree",
    "PromptVocab",
    "RequestRecord",
    "Slo",
    "TraceRequest",
    "gamma_arrivals",
    "poisson_arrivals",
    "random_workload",
    "read_azure_csv",
    "read_mooncake_jsonl",
    "read_trace",
    "run_requests",
    "shared_prefix_workload",
    "summarize",
    "trace_arrivals",
    "trace_workload",
]
__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from edgecloud.bench.arrivals import gamma_arrivals, poisson_arrivals, trace_arrivals
    from edgecloud.bench.client import Endpoint
    from edgecloud.bench.machine import LoadWatch, MachineLoad
    from edgecloud.bench.metrics import BenchSummary, LatencyStats, RequestRecord, Slo, summarize
    from edgecloud.bench.runner import run_requests
    from edgecloud.bench.traces import TraceRequest, read_azure_csv, read_mooncake_jsonl, read_trace
    from edgecloud.bench.workload import (
        BenchRequest,
        LengthScaling,
        PrefixTree,
        PromptVocab,
        random_workload,
        shared_prefix_workload,
        trace_workload,
    )
