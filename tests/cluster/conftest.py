"""The cluster tests' model (the embedded 5.8M-parameter demo model: trained weights, nothing to
write) and clusters of engine instances in threads of the test process (fast: no process to spawn)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.cluster.config import InstanceSpec
from edgecloud.cluster.frontend import ClusterEngine
from edgecloud.cluster.instance import Instance
from edgecloud.cluster.policies import make_policy
from edgecloud.llm.config import EngineConfig
from edgecloud.llm.demo_model import DEMO_MODEL_DIR

# K and V of one 4-token block of the demo model in fp32: 6 layers x 2 KV heads x 64 dims.
BLOCK_BYTES = 2 * 6 * 4 * 2 * 64 * 4


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return Path(DEMO_MODEL_DIR)


def engine_config(model: Path, **options: object) -> EngineConfig:
    base = {"model": str(model), "dtype": "float32", "kv_cache_memory_mb": 4.0, "block_size": 4, "num_threads": 1,
            "seed": 0}
    return EngineConfig(**{**base, **options})  # type: ignore[arg-type]


def thread_cluster(model: Path, roles: list[str], policy: str, **policy_options: object) -> ClusterEngine:
    config = engine_config(model)
    instances = [Instance(InstanceSpec(f"{role}{i}", config, role), backend="thread")  # type: ignore[arg-type]
                 for i, role in enumerate(roles)]
    return ClusterEngine(instances, make_policy(policy, **policy_options))
