"""The discrete-event cluster simulator (issue #18): the cluster's routing policies and router, the
engine's own scheduler and KV manager per instance, steps priced by the engine's cost model
(``PerfModel``) with hardware profiles (accelerator presets, or factors calibrated on this machine
by ``edgecloud sim calibrate``) and model profiles from HF config files; validated against real
runs (``edgecloud sim validate``). Every figure it produces is simulated.

Names are imported on first use, so importing the CLI stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecloud.lazy_exports import lazy_getattr

_EXPORTS = {
    "ClusterSimulator": "edgecloud.sim.simulator",
    "SimRecord": "edgecloud.sim.simulator",
    "SimRequest": "edgecloud.sim.simulator",
    "SimResult": "edgecloud.sim.simulator",
    "TransferModel": "edgecloud.sim.simulator",
    "SimEngineConfig": "edgecloud.sim.instance",
    "SimInstance": "edgecloud.sim.instance",
    "MODEL_CONFIGS": "edgecloud.sim.profiles",
    "CalibratedProfile": "edgecloud.sim.profiles",
    "load_hardware": "edgecloud.sim.profiles",
    "load_model": "edgecloud.sim.profiles",
    "SimClusterSpec": "edgecloud.sim.run",
    "simulate": "edgecloud.sim.run",
    "calibrate": "edgecloud.sim.calibrate",
}

__all__ = [
    "MODEL_CONFIGS",
    "CalibratedProfile",
    "ClusterSimulator",
    "SimClusterSpec",
    "SimEngineConfig",
    "SimInstance",
    "SimRecord",
    "SimRequest",
    "SimResult",
    "TransferModel",
    "calibrate",
    "load_hardware",
    "load_model",
    "simulate",
]

__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from edgecloud.sim.calibrate import calibrate
    from edgecloud.sim.instance import SimEngineConfig, SimInstance
    from edgecloud.sim.profiles import MODEL_CONFIGS, CalibratedProfile, load_hardware, load_model
    from edgecloud.sim.run import SimClusterSpec, simulate
    from edgecloud.sim.simulator import ClusterSimulator, SimRecord, SimRequest, SimResult, TransferModel
