"""Turning a loaded model's dense projections into weight-only int8 or int4 ones.

``quantize_model(model, scheme, gguf=...)`` replaces every decoder layer's ``qkv_proj``, ``o_proj``,
``gate_up_proj`` and ``down_proj`` and the LM head with ``Int8Linear`` (scheme ``int8``, Q8_0) or
``Int4Linear`` (scheme ``int4``, Q4_1), the slots ``make_linear`` builds. Given the GGUF file the
model came from, a tensor already stored in the scheme's block format is taken block for block
from the file; any other tensor (an F32/F16 one, or another block type) is dequantized and
quantized with llama.cpp's reference quantizer, and the report lists it. Without a file the dense
weights are quantized. Embeddings and norms stay dense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgecloud.llm.errors import ModelLoadError
from edgecloud.llm.quant.groups import (
    Int4Groups,
    Int8Groups,
    concat_rows,
    from_gguf_q4_1,
    from_gguf_q8_0,
    quantize_int4,
    quantize_int8,
)
from edgecloud.llm.quant.linear import Int4Linear, Int8Linear

SCHEMES = {"int8": "Q8_0", "int4": "Q4_1"}

# Fused parameter -> the checkpoint projections it stacks, in order.
_FUSED = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}


@dataclass
class QuantizationReport:
    scheme: str
    block_format: str
    from_file: list[str] = field(default_factory=list)  # taken block for block
    requantized: dict[str, str] = field(default_factory=dict)  # name -> the format it was stored in
    weight_bytes: int = 0  # bytes of the quantized projections (what a decode step reads)
    weights: int = 0

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.weight_bytes / max(self.weights, 1)


def _quantize(weight: torch.Tensor, scheme: str) -> Int8Groups | Int4Groups:
    return quantize_int8(weight) if scheme == "int8" else quantize_int4(weight)


def _from_gguf(
    raw: dict[str, object], name: str, scheme: str, report: QuantizationReport
) -> Int8Groups | Int4Groups:
    from gguf.quants import dequantize

    from edgecloud.llm.gguf import RawTensor

    tensor = raw.get(f"{name}.weight")
    if not isinstance(tensor, RawTensor):
        raise ModelLoadError(f"the GGUF file has no tensor for {name}.weight")
    if tensor.kind == report.block_format:
        report.from_file.append(name)
        return from_gguf_q8_0(tensor.data) if scheme == "int8" else from_gguf_q4_1(tensor.data)
    report.requantized[name] = tensor.kind
    if tensor.kind == "Q8_0":
        return _quantize(from_gguf_q8_0(tensor.data).dequantize(), scheme)
    if tensor.kind == "Q4_1":
        return _quantize(from_gguf_q4_1(tensor.data).dequantize(), scheme)
    from gguf import GGMLQuantizationType

    values = dequantize(tensor.data, GGMLQuantizationType[tensor.kind])
    return _quantize(torch.from_numpy(values.astype("float32")), scheme)


def quantize_model(model: torch.nn.Module, scheme: str, gguf: Path | None = None) -> QuantizationReport:
    """Replaces the dense projections of a loaded ``LlamaForCausalLM`` in place (see the module
    docstring). Raises ``ValueError`` for an unknown scheme or a shape the format cannot hold."""
    if scheme not in SCHEMES:
        raise ValueError(f"quantization must be one of {sorted(SCHEMES)}, got {scheme!r}")
    report = QuantizationReport(scheme, SCHEMES[scheme])
    raw = None
    if gguf is not None:
        from edgecloud.llm.gguf import read_raw_tensors

        raw = read_raw_tensors(gguf)
    make = Int8Linear if scheme == "int8" else Int4Linear

    def replace(parent: torch.nn.Module, attr: str, hf_names: tuple[str, ...]) -> None:
        dense = getattr(parent, attr)
        if raw is None:
            groups = _quantize(dense.weight, scheme)
        else:
            groups = concat_rows([_from_gguf(raw, n, scheme, report) for n in hf_names])  # type: ignore[arg-type]
        if tuple(groups.q.shape) != tuple(dense.weight.shape):
            raise ModelLoadError(f"{hf_names[0]}: quantized shape {tuple(groups.q.shape)} differs from "
                                 f"the model's {tuple(dense.weight.shape)}")
        module = make(groups, dense.bias)  # type: ignore[arg-type]
        report.weight_bytes += module.weight_bytes
        report.weights += groups.q.numel()
        setattr(parent, attr, module)

    for i, layer in enumerate(model.model.layers):
        for fused, parts in _FUSED.items():
            owner_name, attr = fused.split(".")
            replace(getattr(layer, owner_name), attr, tuple(f"model.layers.{i}.{p}" for p in parts))
    head_source = "model.embed_tokens" if raw is not None and "lm_head.weight" not in raw else "lm_head"
    replace(model, "lm_head", (head_source,))
    return report
