"""``edgecloud random-model --preset 6m-4k``: the demo model's shapes with a 4k context, which the
cluster benchmarks use to replay long-prompt traces."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.cli import main
from edgecloud.llm import LLM, SamplingParams
from edgecloud.llm.config import ModelConfig
from edgecloud.llm.random_model import PRESETS

DEMO_CONFIG = Path(__file__).parents[2] / "src/edgecloud/assets/demo-llama/config.json"
SHAPE = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


def test_the_6m_4k_preset_has_the_demo_shape_with_a_4k_context() -> None:
    demo = ModelConfig.from_file(DEMO_CONFIG)
    preset = PRESETS["6m-4k"]
    assert [preset[f] for f in SHAPE] == [getattr(demo, f) for f in SHAPE]
    assert preset["vocab_size"] == demo.vocab_size
    assert preset["max_position_embeddings"] == 4096


@pytest.mark.bench  # writes the model through transformers (~10 s here)
def test_a_written_6m_4k_model_takes_a_3000_token_prompt(tmp_path: Path) -> None:
    assert main(["random-model", str(tmp_path / "m"), "--preset", "6m-4k"]) == 0
    config = ModelConfig.from_file(tmp_path / "m" / "config.json")
    demo = ModelConfig.from_file(DEMO_CONFIG)
    assert [getattr(config, f) for f in SHAPE] == [getattr(demo, f) for f in SHAPE]
    assert config.max_position_embeddings == 4096
    llm = LLM(model=str(tmp_path / "m"), dtype="float32", kv_cache_memory_mb=24, num_threads=1)
    out = llm.generate([list(range(5, 3005))], SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 2  # a 3,000-token prompt fits
