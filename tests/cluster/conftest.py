"""Tiny random-weight models written by transformers for the cluster tests, and clusters of
engine instances in threads of the test process (fast: no process to spawn)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.cluster.config import InstanceSpec
from edgecloud.cluster.frontend import ClusterEngine
from edgecloud.cluster.instance import Instance
from edgecloud.cluster.policies import make_policy
from edgecloud.llm.config import EngineConfig
from edgecloud.llm.random_model import write_random_model


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("cluster-model") / "llama", arch="llama")


def engine_config(model: Path, **options: object) -> EngineConfig:
    base = {"model": str(model), "dtype": "float32", "kv_cache_memory_mb": 1.0, "block_size": 4, "num_threads": 1,
            "seed": 0}
    return EngineConfig(**{**base, **options})  # type: ignore[arg-type]


def thread_cluster(model: Path, roles: list[str], policy: str, **policy_options: object) -> ClusterEngine:
    config = engine_config(model)
    instances = [Instance(InstanceSpec(f"{role}{i}", config, role), backend="thread")  # type: ignore[arg-type]
                 for i, role in enumerate(roles)]
    return ClusterEngine(instances, make_policy(policy, **policy_options))
