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
    "EngineStats": "edgecloud.llm.outputs",
    "EngineCore": "edgecloud.llm.engine_core",
    "EngineCoreRequest": "edgecloud.llm.request",
    "AsyncEngine": "edgecloud.llm.async_engine",
    "EngineError": "edgecloud.llm.output_processor",
    "EngineDeadError": "edgecloud.llm.output_processor",
    "EngineConfig": "edgecloud.llm.config",
    "ModelConfig": "edgecloud.llm.config",
    "InvalidRequestError": "edgecloud.llm.errors",
    "ModelLoadError": "edgecloud.llm.errors",
    "CompletionOutput": "edgecloud.llm.outputs",
    "OutputKind": "edgecloud.llm.outputs",
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
    "EngineCore",
    "EngineCoreRequest",
    "EngineDeadError",
    "EngineError",
    "EngineStats",
    "InvalidRequestError",
    "LLMEngine",
    "ModelConfig",
    "ModelLoadError",
    "OutputKind",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "TokenLogprob",
]

if TYPE_CHECKING:
    from edgecloud.llm.async_engine import AsyncEngine
    from edgecloud.llm.config import EngineConfig, ModelConfig
    from edgecloud.llm.engine import LLM, LLMEngine
    from edgecloud.llm.engine_core import EngineCore
    from edgecloud.llm.errors import InvalidRequestError, ModelLoadError
    from edgecloud.llm.output_processor import EngineDeadError, EngineError
    from edgecloud.llm.outputs import (
        CompletionOutput,
        EngineStats,
        OutputKind,
        RequestMetrics,
        RequestOutput,
        TokenLogprob,
    )
    from edgecloud.llm.request import EngineCoreRequest
    from edgecloud.llm.sampling_params import SamplingParams


__getattr__ = lazy_getattr(__name__, globals(), _EXPORTS)
