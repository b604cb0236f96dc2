"""C2P2SL: pipelined split learning over wireless links (arXiv 2511.23167).

UEs run the layers before a cut, a base station the rest; C2P2SL pipelines micro-batches through
UE compute, uplink, BS compute and downlink, and jointly optimises the cut, the micro-batches and
the uplink shares. ``runtime.train`` runs it for real (gloo, one process per UE), ``latency``
predicts it, ``optimizer`` plans it, ``bench`` compares it with sequential split learning.

Names are imported lazily so that ``edgecloud --help`` does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Plan": "latency",
    "Scenario": "latency",
    "UEConfig": "latency",
    "simulate": "latency",
    "exhaustive": "optimizer",
    "optimise": "optimizer",
    "sequential_plan": "optimizer",
    "TrainConfig": "runtime",
    "TrainResult": "runtime",
    "UEFault": "runtime",
    "train": "runtime",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"edgecloud.splitlearn.{_EXPORTS[name]}"), name)
