"""The cluster layer: many engine instances behind one OpenAI-compatible router (issue #18).

Instances are engine cores in local processes or Ray actors (``Instance``); the router's core
(``Router``) asks a routing policy (``make_policy``: round-robin, least-outstanding,
prefix-aware, pd) where each request goes, over read-only views of the instances; P/D hand-overs
move KV blocks by key through a connector (``make_connector``: zmq, ray). ``ClusterEngine`` is the
cluster as the OpenAI server drives it; ``serve_cluster`` runs it (``edgecloud cluster serve``).
The simulator (``edgecloud.sim``) drives the same ``Router`` and policies.

Names are imported on first use, so importing the CLI stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecloud.lazy_exports import lazy_getattr

_EXPORTS = {
    "ClusterConfigError": "edgecloud.cluster.config",
    "InstanceSpec": "edgecloud.cluster.config",
    "instances_from_flags": "edgecloud.cluster.config",
    "instances_from_toml": "edgecloud.cluster.config",
    "KVConnector": "edgecloud.cluster.connectors",
    "TransferResult": "edgecloud.cluster.connectors",
    "make_connector": "edgecloud.cluster.connectors",
    "ClusterEngine": "edgecloud.cluster.frontend",
    "Handover": "edgecloud.cluster.frontend",
    "Instance": "edgecloud.cluster.instance",
    "InstanceStartError": "edgecloud.cluster.instance",
    "ClusterSettings": "edgecloud.cluster.main",
    "build_cluster": "edgecloud.cluster.main",
    "build_router_app": "edgecloud.cluster.main",
    "serve_cluster": "edgecloud.cluster.main",
    "POLICIES": "edgecloud.cluster.policies",
    "RoutingPolicy": "edgecloud.cluster.policies",
    "make_policy": "edgecloud.cluster.policies",
    "register_policy": "edgecloud.cluster.policies",
    "InstanceView": "edgecloud.cluster.router",
    "NoInstanceAvailable": "edgecloud.cluster.router",
    "Route": "edgecloud.cluster.router",
    "RouteRequest": "edgecloud.cluster.router",
    "Router": "edgecloud.cluster.router",
}

__all__ = [
    "POLICIES",
    "ClusterConfigError",
    "ClusterEngine",
    "ClusterSettings",
    "Handover",
    "Instance",
    "InstanceSpec",
    "InstanceStartError",
    "InstanceView",
    "KVConnector",
    "NoInstanceAvailable",
    "Route",
    "RouteRequest",
    "Router",
    "RoutingPolicy",
    "TransferResult",
    "build_cluster",
    "build_router_app",
    "instances_from_flags",
    "instances_from_toml",
    "make_connector",
    "make_policy",
    "register_policy",
    "serve_cluster",
]

__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)

if TYPE_CHECKING:
    from edgecloud.cluster.config import ClusterConfigError, InstanceSpec, instances_from_flags, instances_from_toml
    from edgecloud.cluster.connectors import KVConnector, TransferResult, make_connector
    from edgecloud.cluster.frontend import ClusterEngine, Handover
    from edgecloud.cluster.instance import Instance, InstanceStartError
    from edgecloud.cluster.main import ClusterSettings, build_cluster, build_router_app, serve_cluster
    from edgecloud.cluster.policies import POLICIES, RoutingPolicy, make_policy, register_policy
    from edgecloud.cluster.router import InstanceView, NoInstanceAvailable, Route, Router, RouteRequest
