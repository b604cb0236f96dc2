from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.wireless.dataset import SampleGenerator, generate


@pytest.fixture(scope="session")
def generator() -> SampleGenerator:
    return SampleGenerator(seed=0)


@pytest.fixture(scope="session")
def samples(generator: SampleGenerator) -> list:
    """30 scenes of the training layout and 12 of the held-out one."""
    return [generator.sample("main", i) for i in range(30)] + [generator.sample("narrow", i) for i in range(12)]


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wmlm-data")
    generate(out, {"main": 12, "narrow": 4}, seed=3, shard_size=5)
    return out
