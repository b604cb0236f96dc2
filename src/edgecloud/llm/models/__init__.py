"""Decoder models the engine runs, by HF ``model_type``."""

from edgecloud.llm.models.llama import LlamaForCausalLM

MODEL_CLASSES = {
    "llama": LlamaForCausalLM,
    "mistral": LlamaForCausalLM,
    "qwen2": LlamaForCausalLM,
    "qwen3": LlamaForCausalLM,
}

__all__ = ["MODEL_CLASSES", "LlamaForCausalLM"]
