"""OOCO: online and offline work co-located on one cluster (arXiv 2511.21862; issue #19).

Instances form a latency-strict and a latency-relaxed pool; requests carry OpenAI's
``service_tier`` (``default`` online, ``flex`` offline). The ``ooco`` routing policy places
offline work where the roofline model (``Roofline``, over the engine's ``PerfModel``) says there
is slack, and the engines' service tiers preempt it when online work needs the room; ``separate``
and ``priority`` are the baselines. Offline jobs arrive through the OpenAI Batch API
(``edgecloud.cluster.batches``).
"""

from edgecloud.cluster.ooco.policies import OOCO, RELAXED, STRICT, OOCOHandover, PDPriority, Priority, Separate
from edgecloud.cluster.ooco.roofline import FlexStepBudget, Roofline, perf_model_from_files

__all__ = [
    "OOCO", "RELAXED", "STRICT", "FlexStepBudget", "OOCOHandover", "PDPriority", "Priority", "Roofline", "Separate",
    "perf_model_from_files",
]
