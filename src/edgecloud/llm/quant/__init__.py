"""Weight-only quantization of the engine's models: int8 (GGUF Q8_0) and int4 (GGUF Q4_1), group-wise,
loaded block for block from GGUF files or quantized from dense weights (issue #27)."""

from edgecloud.llm.quant.groups import Int4Groups, Int8Groups, quantize_int4, quantize_int8
from edgecloud.llm.quant.linear import Int4Linear, Int8Linear
from edgecloud.llm.quant.model import SCHEMES, QuantizationReport, quantize_model

__all__ = [
    "SCHEMES", "Int4Groups", "Int4Linear", "Int8Groups", "Int8Linear", "QuantizationReport",
    "quantize_int4", "quantize_int8", "quantize_model",
]
