"""The model's generation_config.json fills sampling fields a request leaves out, never ones it sends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud.llm import ModelLoadError
from edgecloud.llm.config import read_generation_defaults
from edgecloud.server.protocol import CompletionRequest


def test_defaults_fill_only_omitted_fields() -> None:
    defaults = {"temperature": 0.8, "top_p": 0.95}
    omitted = CompletionRequest(model="m", prompt="hi").sampling_params(16, None, defaults)
    assert (omitted.temperature, omitted.top_p) == (0.8, 0.95)
    sent = CompletionRequest(model="m", prompt="hi", temperature=0.0).sampling_params(16, None, defaults)
    assert (sent.temperature, sent.top_p) == (0.0, 0.95)
    plain = CompletionRequest(model="m", prompt="hi").sampling_params(16, None)
    assert (plain.temperature, plain.top_p) == (1.0, 1.0)


def test_generation_config_is_read_with_greedy_and_broken_files_handled(tmp_path: Path) -> None:
    path = tmp_path / "generation_config.json"
    assert read_generation_defaults(tmp_path) == {}
    path.write_text(json.dumps({"do_sample": True, "temperature": 0.6, "top_k": 20, "eos_token_id": 2}))
    assert read_generation_defaults(tmp_path) == {"temperature": 0.6, "top_k": 20}
    path.write_text(json.dumps({"do_sample": False, "temperature": 0.6}))
    assert read_generation_defaults(tmp_path) == {}
    path.write_text("{")
    with pytest.raises(ModelLoadError, match=r"generation_config\.json"):
        read_generation_defaults(tmp_path)


def test_the_demo_model_recommends_its_sampling_settings() -> None:
    from edgecloud.llm.demo_model import DEMO_MODEL_DIR

    assert read_generation_defaults(Path(DEMO_MODEL_DIR)) == {"temperature": 0.8, "top_p": 0.95}
