"""Prometheus metrics of the server: the engine's state read at scrape time, and per-request
latency histograms observed when each request ends.

Every latency starts when the server's event loop read the bytes that began the HTTP request
(``received_at``, stamped by ``edgecloud.server.main.stamping`` on the engine's clock
``time.monotonic``; when the app first saw the request if no stamp came), so that parsing,
validation, tokenization and the wait for the request's task all count. The
user-facing histograms end where the server's part ends, when bytes are handed to the socket:
TTFT at the first streamed chunk carrying a token, e2e at the answer's last chunk (the whole
body, unstreamed), TPOT = (e2e − TTFT) / (output tokens − 1): the definitions ``edgecloud bench
serve`` and ``vllm bench serve`` measure from the client, so the two differ only by the network
and the client. The engine-side histograms (vLLM's definitions) end when the engine thread
sampled the first and last token instead; the difference is the hand-off from the engine thread
to the event loop, chunk shaping and SSE framing. Queue time is the engine's: arrival in the
engine → first scheduled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edgecloud.llm import EngineStats, RequestOutput

# Buckets fine enough to read percentiles of a small CPU model and of a GPU one.
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
    0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0,
)


class _EngineStatsCollector(Collector):
    """Engine gauges and counters, read from ``EngineStats`` when Prometheus scrapes."""

    def __init__(self, stats: Callable[[], EngineStats], model: str) -> None:
        self._stats = stats
        self._model = model

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self._stats()
        labels = ["model_name"]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"edgecloud_{name}", doc, labels=labels)
            family.add_metric([self._model], value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(f"edgecloud_{name}", doc, labels=labels)
            family.add_metric([self._model], value)
            return family

        yield gauge("num_requests_waiting", "Requests waiting to be scheduled.", s.num_waiting)
        yield gauge("num_requests_running", "Requests in the running batch.", s.num_running)
        yield gauge("kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0..1).", s.kv_usage)
        yield gauge("kv_cache_free_blocks", "Free KV-cache blocks.", s.num_free_blocks)
        yield gauge("kv_cache_total_blocks", "KV-cache blocks in the pool.", s.num_total_blocks)
        hit_rate = s.prefix_cache_hits / s.prefix_cache_queries if s.prefix_cache_queries else 0.0
        yield gauge("prefix_cache_hit_rate", "Prompt tokens found in the prefix cache / looked up.", hit_rate)
        yield counter("prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", s.prefix_cache_queries)
        yield counter("prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_cache_hits)
        yield counter("prompt_tokens", "Prompt tokens computed (prefill).", s.prompt_tokens_total)
        yield counter("generation_tokens", "Tokens generated.", s.generation_tokens_total)
        yield counter("num_preemptions", "Sequences preempted for lack of KV blocks.", s.num_preemptions)
        yield counter("num_abandoned_steps", "Steps of offline (flex) work dropped between layers for online "
                      "work (docs/engine-core.md).", s.num_abandoned_steps)
        if s.moe is not None:
            yield from self._moe(s)

    def _moe(self, s: EngineStats) -> Iterator[CounterMetricFamily]:
        """Mixture-of-experts routing counters (docs/moe.md): rates of these give each expert's and
        each EP rank's load, and max / mean over ranks the imbalance placement works on."""
        moe = s.moe
        assert moe is not None
        choices = CounterMetricFamily("edgecloud_moe_expert_choices", "Top-k router choices per MoE layer and expert.",
                                      labels=["model_name", "layer", "expert"])
        tokens = CounterMetricFamily("edgecloud_moe_rank_tokens",
                                     "Tokens computed by each expert-parallel rank per MoE layer.",
                                     labels=["model_name", "layer", "rank"])
        for layer, per_expert, per_rank in zip(moe.layers, moe.expert_choices, moe.rank_tokens, strict=True):
            for expert, value in enumerate(per_expert):
                choices.add_metric([self._model, str(layer), str(expert)], value)
            for rank, value in enumerate(per_rank):
                tokens.add_metric([self._model, str(layer), str(rank)], value)
        yield choices
        yield tokens
        migrated = CounterMetricFamily("edgecloud_moe_migrated_bytes",
                                       "Expert weight bytes copied by live rebalancing.", labels=["model_name"])
        migrated.add_metric([self._model], moe.migrated_bytes)
        yield migrated


class ServerMetrics:
    """One registry per server, so several servers (tests) never share counters."""

    def __init__(self, stats: Callable[[], EngineStats], model: str) -> None:
        self.registry = CollectorRegistry()
        self.model = model
        self.registry.register(_EngineStatsCollector(stats, model))
        labels = ["model_name"]
        self.ttft = Histogram(
            "edgecloud_time_to_first_token_seconds",
            "Request received to the first streamed chunk with a token handed to the socket.", labels,
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.tpot = Histogram(
            "edgecloud_time_per_output_token_seconds",
            "(Last chunk sent - first token sent) / (output tokens - 1), streamed requests.", labels,
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.e2e = Histogram(
            "edgecloud_e2e_request_latency_seconds", "Request received to the answer's last byte handed to the socket.",
            labels, buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.engine_ttft = Histogram(
            "edgecloud_engine_time_to_first_token_seconds", "Request received to the engine sampling its first token.",
            labels, buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.engine_tpot = Histogram(
            "edgecloud_engine_time_per_output_token_seconds",
            "(Engine's last token - its first) / (output tokens - 1).", labels,
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.queue = Histogram(
            "edgecloud_request_queue_time_seconds", "Arrival in the engine to first scheduled.", labels,
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.loop_lag = Histogram(
            "edgecloud_event_loop_lag_seconds", "How late the HTTP event loop wakes from a timer.",
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.finished = Counter(
            "edgecloud_request_success", "Requests finished, by finish reason.",
            ["model_name", "finished_reason"], registry=self.registry,
        )
        self.http_errors = Counter(
            "edgecloud_http_errors", "Requests answered with an error, by status code.",
            ["status"], registry=self.registry,
        )

    def count_status(self, status: int) -> None:
        if status >= 400:
            self.http_errors.labels(str(status)).inc()

    async def watch_event_loop(self, period_s: float = 0.1) -> None:
        """Observe how late the event loop wakes from a ``period_s`` sleep, forever: the delay
        every request's I/O sees when the HTTP front end is starved (CPU, or the GIL held by the
        engine thread), which the per-request histograms, started at receipt, cannot show."""
        while True:
            start = time.monotonic()
            await asyncio.sleep(period_s)
            self.loop_lag.observe(max(0.0, time.monotonic() - start - period_s))

    def observe_engine(self, output: RequestOutput, received_at: float, num_tokens: int) -> None:
        """Record an engine request that ended (unless aborted): its queue time and the engine-side
        latencies; ``num_tokens`` is its longest completion's length."""
        m = output.metrics
        if any(c.finish_reason == "abort" for c in output.outputs):
            return
        if m.first_scheduled_time is not None:
            self.queue.labels(self.model).observe(m.first_scheduled_time - m.arrival_time)
        if m.first_token_time is None or m.finished_time is None:
            return
        self.engine_ttft.labels(self.model).observe(m.first_token_time - received_at)
        if num_tokens > 1:
            self.engine_tpot.labels(self.model).observe((m.finished_time - m.first_token_time) / (num_tokens - 1))

    def observe_first_chunk(self, received_at: float, first_sent: float) -> None:
        """Record a streamed answer's TTFT as soon as its first chunk with a token is handed to the
        socket, whether or not the stream then runs to its end."""
        self.ttft.labels(self.model).observe(first_sent - received_at)

    def observe_stream(self, received_at: float, first_sent: float, last_sent: float, num_tokens: int) -> None:
        """Record a streamed answer that went out whole: ``first_sent`` when the first chunk with a
        token was handed to the socket, ``last_sent`` when the last chunk was; ``num_tokens`` the
        longest completion's tokens."""
        self.e2e.labels(self.model).observe(last_sent - received_at)
        if num_tokens > 1:
            self.tpot.labels(self.model).observe((last_sent - first_sent) / (num_tokens - 1))

    def observe_unstreamed(self, received_at: float, sent: float) -> None:
        """Record an unstreamed answer handed to the socket at ``sent``. It has no first token of its
        own (every token arrives with the body), so it counts in e2e and the engine histograms."""
        self.e2e.labels(self.model).observe(sent - received_at)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
