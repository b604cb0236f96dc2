"""The router's Prometheus metrics beyond the server's own: per instance (labels ``instance``,
``role``, ``pool``) and per KV hand-over.

The server's series (``edgecloud_num_requests_waiting``, the TTFT/TPOT/e2e histograms...) stay as
they are, computed over the whole cluster: the engine counters added up over the instances, the
latencies as the router's clients see them. This collector adds each instance's counters (read
from its latest step), the router's accounting (outstanding requests, routed requests), whether it
is up and how often it restarted; and the hand-overs of P/D: how many, blocks sent and skipped,
bytes, and the time of each part.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edgecloud.cluster.frontend import ClusterEngine, Handover

_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LABELS = ["instance", "role", "pool"]


class InstanceCollector(Collector):
    def __init__(self, engine: ClusterEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        gauges = {
            "up": ("1 when the instance is serving, 0 while it is down or restarting.", []),
            "num_requests_waiting": ("Requests waiting to be scheduled on the instance.", []),
            "num_requests_running": ("Requests in the instance's running batch.", []),
            "kv_cache_usage_perc": ("Fraction of the instance's KV blocks in use (0..1).", []),
            "outstanding_requests": ("Requests the router sent to the instance that have not finished.", []),
            "pending_prefill_tokens": ("Prompt tokens sent to the instance and not yet prefilled.", []),
        }
        counters = {
            "prefix_cache_queries": ("Prompt tokens the instance looked up in its prefix cache.", []),
            "prefix_cache_hits": ("Prompt tokens the instance found in its prefix cache.", []),
            "prompt_tokens": ("Prompt tokens the instance computed.", []),
            "generation_tokens": ("Tokens the instance generated.", []),
            "num_preemptions": ("Sequences the instance preempted.", []),
            "routed_requests": ("Requests (or P/D stages) the router sent to the instance.", []),
            "restarts": ("Times the instance's engine core was restarted.", []),
        }
        views = {v.name: v for v in self.engine.router.views} if self.engine.router else {}
        for instance in self.engine.instances:
            labels = [instance.name, instance.role, instance.pool]
            s = instance.stats()
            view = views.get(instance.name)
            for name, value in (
                ("up", float(instance.healthy)), ("num_requests_waiting", s.num_waiting),
                ("num_requests_running", s.num_running), ("kv_cache_usage_perc", s.kv_usage),
                ("outstanding_requests", view.outstanding if view else 0),
                ("pending_prefill_tokens", view.pending_prefill_tokens if view else 0),
            ):
                gauges[name][1].append((labels, value))
            for name, value in (
                ("prefix_cache_queries", s.prefix_cache_queries), ("prefix_cache_hits", s.prefix_cache_hits),
                ("prompt_tokens", s.prompt_tokens_total), ("generation_tokens", s.generation_tokens_total),
                ("num_preemptions", s.num_preemptions), ("routed_requests", view.routed if view else 0),
                ("restarts", instance.epoch),
            ):
                counters[name][1].append((labels, value))
        for name, (doc, samples) in gauges.items():
            family = GaugeMetricFamily(f"edgecloud_instance_{name}", doc, labels=LABELS)
            for labels, value in samples:
                family.add_metric(labels, value)
            yield family
        for name, (doc, samples) in counters.items():
            family = CounterMetricFamily(f"edgecloud_instance_{name}", doc, labels=LABELS)
            for labels, value in samples:
                family.add_metric(labels, value)
            yield family


class HandoverMetrics:
    """Counters and histograms of P/D hand-overs; ``observe`` is the engine's ``on_handover``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handovers = Counter("edgecloud_kv_handovers", "P/D hand-overs (prefill on one instance, decode on "
                                 "another).", ["connector"], registry=registry)
        self.blocks = Counter("edgecloud_kv_transfer_blocks", "KV blocks of handed-over prompts: sent, or skipped "
                              "because the receiver had them.", ["connector", "kind"], registry=registry)
        self.bytes = Counter("edgecloud_kv_transfer_bytes", "KV bytes sent between instances.", ["connector"],
                             registry=registry)
        self.transfer = Histogram("edgecloud_kv_transfer_seconds", "KV transfer of one hand-over, from the prefill's "
                                  "end to the last block imported.", ["connector"], buckets=_SECONDS, registry=registry)
        self.prefill = Histogram("edgecloud_pd_prefill_seconds", "Prefill stage of a P/D request on its prefill "
                                 "instance.", buckets=_SECONDS, registry=registry)
        self.first_token = Histogram("edgecloud_pd_decode_first_token_seconds", "From the hand-over to the decode "
                                     "instance's first token.", buckets=_SECONDS, registry=registry)

    def observe(self, connector: str, handover: Handover) -> None:
        t = handover.transfer
        self.handovers.labels(connector).inc()
        self.blocks.labels(connector, "sent").inc(t.sent)
        self.blocks.labels(connector, "skipped").inc(t.skipped)
        self.bytes.labels(connector).inc(t.bytes)
        self.transfer.labels(connector).observe(t.seconds)
        self.prefill.observe(handover.prefill_s)
        if handover.first_token_s is not None:
            self.first_token.observe(handover.first_token_s)
