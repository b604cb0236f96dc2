"""The edgecloud LLM engine: paged KV cache with prefix caching, continuous batching with
chunked prefill and priorities, pluggable decode attention, vLLM-shaped APIs.

    from edgecloud.llm import LLM, SamplingParams
    outs = LLM(model="DIR").generate(["Hello"], SamplingParams(max_tokens=16))
"""

from edgecloud.llm.async_engine import AsyncEngine, EngineError
from edgecloud.llm.config import EngineConfig, ModelConfig
from edgecloud.llm.engine import LLM, EngineStats, LLMEngine
from edgecloud.llm.errors import InvalidRequestError, ModelLoadError
from edgecloud.llm.outputs import CompletionOutput, RequestMetrics, RequestOutput, TokenLogprob
from edgecloud.llm.sampling_params import SamplingParams

__all__ = [
    "LLM",
    "AsyncEngine",
    "CompletionOutput",
    "EngineConfig",
    "EngineError",
    "EngineStats",
    "InvalidRequestError",
    "LLMEngine",
    "ModelConfig",
    "ModelLoadError",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
]
