"""Load generation and measurement shared by edgecloud's serving benchmarks: trace readers
(Azure LLM 2023, Mooncake), workloads with exact token lengths, arrival processes, a streaming
OpenAI-API client, metrics (TTFT, TPOT, ITL, e2e, throughput, goodput) and reports."""

from edgecloud.bench.arrivals import gamma_arrivals, poisson_arrivals, trace_arrivals
from edgecloud.bench.client import Endpoint
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

__all__ = [
    "BenchRequest",
    "BenchSummary",
    "Endpoint",
    "LatencyStats",
    "LengthScaling",
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
