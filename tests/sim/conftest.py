"""A tiny random-weight Llama written by transformers: the real engine the simulator is compared with."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.llm.random_model import write_random_model


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("sim-model") / "llama", arch="llama")
