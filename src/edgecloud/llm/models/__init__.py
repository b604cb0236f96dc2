"""Decoder models the engine runs, by HF ``model_type``."""

from edgecloud.llm.models.llama import LlamaForCausalLM
from edgecloud.llm.models.moe import MoEForCausalLM

MODEL_CLASSES = {
    "llama": LlamaForCausalLM,
    "mistral": LlamaForCausalLM,
    "qwen2": LlamaForCausalLM,
    "qwen3": LlamaForCausalLM,
    "mixtral": MoEForCausalLM,
    "qwen2_moe": MoEForCausalLM,
    "qwen3_moe": MoEForCausalLM,
    "deepseek_v3": MoEForCausalLM,
}

__all__ = ["MODEL_CLASSES", "LlamaForCausalLM", "MoEForCausalLM"]
