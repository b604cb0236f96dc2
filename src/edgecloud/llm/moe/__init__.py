"""Mixture-of-experts serving: MoE blocks, expert placement, expert parallelism (docs/moe.md).

``layer`` (the MoE block: router, experts in physical slots, shared experts), ``routing`` (each
family's top-k), ``runtime`` (a rank's expert maps, routing counters and live migration: the
``StepContext.moe`` of every step), ``placement`` (placements and the ``static``, ``eplb`` and
``omni`` policies over load matrices), ``rebalance`` (OmniPlacement's dynamic rebalancing),
``parallel`` (expert parallelism over processes with ``torch.distributed``).
"""

from edgecloud.llm.moe.placement import (
    Placement,
    align,
    eplb_placement,
    omni_placement,
    robust_omni_placement,
    static_placement,
)

__all__ = ["Placement", "align", "eplb_placement", "omni_placement", "robust_omni_placement", "static_placement"]
