"""The edgecloud LLM engine: paged KV cache with prefix caching, continuous batching with
chunked prefill and priorities, pluggable decode attention, vLLM-shaped APIs.

    from edgecloud.llm import LLM, SamplingParams
    outs = LLM(model="DIR").generate(["Hello"], SamplingParams(max_tokens=16))

Names are imported on first use, so importing a light submodule (the CLI's option parser) does
not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgecloud.lazy_exports import lazy_getattr

_EXPORTS = {
    "LLM": "edgecloud.llm.engine",
    "LLMEngine": "edgecloud.llm.engine",
    "EngineStats": "edgecloud.llm.engine",
    "AsyncEngine": "edgecloud.llm.async_engine",
    "EngineError": "edgecloud.llm.async_engine",
    "EngineConfig": "edgecloud.llm.config",
    "ModelConfig": "edgecloud.llm.config",
    "InvalidRequestError": "edgecloud.llm.errors",
    "ModelLoadError": "edgecloud.llm.errors",
    "CompletionOutput": "edgecloud.llm.outputs",
    "KVExport": "edgecloud.llm.outputs",
    "RequestMetrics": "edgecloud.llm.outputs",
    "RequestOutput": "edgecloud.llm.outputs",
    "TokenLogprob": "edgecloud.llm.outputs",
    "SamplingParams": "edgecloud.llm.sampling_params",
}

__all__ = [
    "LLM",
    "AsyncEngine",
    "CompletionOutput",
    "EngineConfig",
    "EngineError",
    "EngineStats",
    "InvalidRequestError",
    "KVExport",
    "LLMEngine",
    "ModelConfig",
    "ModelLoadError",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
]

if TYPE_CHECKING:
    from edgecloud.llm.async_engine import AsyncEngine, EngineError
    from edgecloud.llm.config import EngineConfig, ModelConfig
    from edgecloud.llm.engine import LLM, EngineStats, LLMEngine
    from edgecloud.llm.errors import InvalidRequestError, ModelLoadError
    from edgecloud.llm.outputs import CompletionOutput, KVExport, RequestMetrics, RequestOutput, TokenLogprob
    from edgecloud.llm.sampling_params import SamplingParams


__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)
