"""Weight-only int8/int4: GGUF blocks read as llama.cpp stores them, layers that compute the quantized
math, a model quantized in place that still generates, and perplexity on a held-out text."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgecloud.llm import LLM, SamplingParams
from edgecloud.llm.quant import Int4Linear, Int8Linear, quantize_int4, quantize_int8, quantize_model
from edgecloud.llm.quant.groups import Int4Groups, from_gguf_q4_1, from_gguf_q8_0
from edgecloud.llm.quant.linear import C_KERNEL_MAX_ROWS, activation_bits, layer_kernel, q4_1_kernel
from edgecloud.llm.quant.perplexity import perplexity
from edgecloud.llm.random_model import write_random_model

gguf = pytest.importorskip("gguf")


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_1"])
def test_blocks_read_as_gguf_dequantizes_them(kind: str) -> None:
    from gguf.quants import dequantize, quantize

    weights = np.random.default_rng(0).standard_normal((48, 96)).astype(np.float32)
    qtype = gguf.GGMLQuantizationType[kind]
    raw = quantize(weights, qtype)
    groups = from_gguf_q8_0(raw) if kind == "Q8_0" else from_gguf_q4_1(raw)
    assert tuple(groups.q.shape) == (48, 96)
    np.testing.assert_array_equal(groups.dequantize().numpy(), dequantize(raw, qtype))


@pytest.mark.parametrize("kind", ["Q8_0", "Q4_1"])
def test_our_quantizers_match_llama_cpps_reference(kind: str) -> None:
    from gguf.quants import quantize

    weights = np.random.default_rng(1).standard_normal((16, 64)).astype(np.float32)
    ours = quantize_int8(torch.from_numpy(weights)) if kind == "Q8_0" else quantize_int4(torch.from_numpy(weights))
    theirs = quantize(weights, gguf.GGMLQuantizationType[kind])
    reread = from_gguf_q8_0(theirs) if kind == "Q8_0" else from_gguf_q4_1(theirs)
    # Same codes except where a value sits on a rounding boundary (the scales are rounded to fp16 apart).
    assert (ours.q != reread.q).float().mean() < 0.01
    np.testing.assert_allclose(ours.dequantize().numpy(), reread.dequantize().numpy(), atol=float(reread.d.max()))


def test_int8_linear_is_the_dequantized_product() -> None:
    torch.manual_seed(0)
    groups = quantize_int8(torch.randn(2100, 64))  # more rows than one slice
    layer = Int8Linear(groups)
    x = torch.randn(5, 64)
    torch.testing.assert_close(layer(x), x @ groups.dequantize().t(), rtol=1e-5, atol=1e-5)


def test_int4_linear_computes_q4_1_with_bf16_scales_and_activations_on_many_rows() -> None:
    torch.manual_seed(0)
    groups = quantize_int4(torch.randn(64, 128))
    layer = Int4Linear(groups, bias=torch.ones(64))
    x = torch.randn(C_KERNEL_MAX_ROWS + 3, 128)  # past the C kernel: torch's bf16 int4 kernel
    # The reference: the same code, scale d and offset m + 8d rounded to bf16, activations in bf16.
    d = groups.d.float().to(torch.bfloat16).float()
    zero = (groups.m.float() + 8 * groups.d.float()).to(torch.bfloat16).float()
    w = (groups.q.float().view(64, 4, 32) - 8) * d[..., None] + zero[..., None]
    want = x.to(torch.bfloat16).float() @ w.view(64, 128).t() + 1
    torch.testing.assert_close(layer(x), want, rtol=2e-2, atol=2e-2)
    assert layer.weight_bytes * 8 / (64 * 128) == 5.0  # as Q4_1: 4-bit codes, two 16-bit numbers per 32


def q4_1_reference(groups: Int4Groups, x: torch.Tensor, bits: int) -> torch.Tensor:
    """What the C kernel computes: with 8-bit activations each group of 32 inputs rounded to int8 at
    ``max|x| / 127`` (half to even) and the sum term taken from the exact inputs."""
    n, k = groups.q.shape
    if bits == 32:
        return x @ groups.dequantize().t()
    xg = x.view(-1, k // 32, 32)
    dx = xg.abs().amax(-1) / 127
    inv = torch.where(dx > 0, 1 / dx, torch.zeros_like(dx))
    qx = torch.round(xg * inv[..., None]).clamp(-127, 127)
    dots = torch.einsum("rgj,ngj->rng", qx.double(), groups.q.view(n, k // 32, 32).double())
    d, m = groups.d.double(), groups.m.double()
    return (torch.einsum("rng,ng,rg->rn", dots, d, dx.double()) + xg.double().sum(-1) @ m.t()).float()


@pytest.mark.parametrize("rows", range(1, C_KERNEL_MAX_ROWS + 1))
@pytest.mark.parametrize("shape", [(64, 128), (7, 96), (1, 32), (577, 1536), (9, 4128)])
def test_int4_linear_on_few_rows_computes_the_c_kernels_arithmetic(shape: tuple[int, int], rows: int) -> None:
    """The C kernel (one-stream decode): exact Q4_1 weights against int8-per-group or float32
    activations — torch's bf16 kernel is ~1e-2 off either; the layer takes it in its int8 build.
    Shapes cover a partial last chunk of 4 groups (3, 1 and 48 groups), row counts that leave a
    partial block of 4 weight rows, and more groups than one 16-wide pass of the offsets (129)."""
    kernel = q4_1_kernel()
    assert kernel is not None  # gcc is part of this project's machines: the kernel must build
    bits = activation_bits()
    assert bits in (8, 32)
    n, k = shape
    torch.manual_seed(n + k + rows)
    groups = quantize_int4(torch.randn(n, k))
    layer = Int4Linear(groups)
    x = torch.randn(rows, k)
    x[0, :32] = 0  # a group of zeros: scale 0, no division by it
    direct = torch.full((rows, n), float("nan"))
    assert kernel(x.data_ptr(), layer.codes.data_ptr(), layer.scales.data_ptr(), direct.data_ptr(), rows, n, k, 2) == 0
    torch.testing.assert_close(direct, q4_1_reference(groups, x, bits), rtol=1e-5, atol=1e-4)
    # and close to the dequantized product (what the rounding of 8-bit activations costs)
    torch.testing.assert_close(direct, x @ groups.dequantize().t(), rtol=0.05, atol=0.05 * k**0.5)
    if bits != 8:  # the layer uses the kernel only in its int8 (VNNI) build
        assert layer_kernel() is None
        return
    assert layer_kernel() is kernel
    torch.testing.assert_close(layer(x), direct, rtol=0, atol=0)
    x16 = x.to(torch.bfloat16)  # a bf16 model: the same kernel, output back in bf16
    got = layer(x16)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), q4_1_reference(groups, x16.float(), bits), rtol=1e-2, atol=1e-2)


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("quant") / "llama", hidden_size=64, intermediate_size=128,
                              num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_a_quantized_model_generates_and_keeps_its_perplexity(small_llama: Path, scheme: str) -> None:
    llm = LLM(model=str(small_llama), dtype="float32", kv_cache_memory_mb=1)
    runner = llm.engine.core.executor
    tokens = [int(t) for t in torch.randint(2, 300, (96,), generator=torch.Generator().manual_seed(0))]
    dense = perplexity(runner, tokens, window=48)
    report = quantize_model(runner.model, scheme)
    assert isinstance(runner.model.lm_head, Int8Linear if scheme == "int8" else Int4Linear)
    assert report.weights > 0 and report.from_file == []
    quantized = perplexity(runner, tokens, window=48)
    assert abs(quantized / dense - 1) < (0.02 if scheme == "int8" else 0.06)
    out = llm.generate([tokens[:10]], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 5
    assert llm.engine.kv.num_free_blocks == llm.engine.kv.num_blocks


def test_a_perplexity_window_longer_than_the_engine_holds_is_refused_by_name(small_llama: Path) -> None:
    llm = LLM(model=str(small_llama), dtype="float32", kv_cache_memory_mb=1, max_model_len=64)
    with pytest.raises(ValueError, match="window=65 is longer than the 64 positions"):
        perplexity(llm.engine.core.executor, list(range(2, 200)), window=65)
    assert perplexity(llm.engine.core.executor, list(range(2, 200)), window=64) > 1


def test_unknown_scheme_is_refused(small_llama: Path) -> None:
    llm = LLM(model=str(small_llama), dtype="float32", kv_cache_memory_mb=1)
    with pytest.raises(ValueError, match="quantization must be one of"):
        quantize_model(llm.engine.core.executor.model, "int3")


def test_the_engine_serves_a_quantized_model_from_its_config(llama_dir: Path) -> None:
    from edgecloud.llm import LLM, SamplingParams
    from edgecloud.llm.quant.linear import Int8Linear

    llm = LLM(model=str(llama_dir), dtype="float32", kv_cache_memory_mb=1, quantization="int8")
    model = llm.engine.core.executor.model  # type: ignore[attr-defined]
    assert isinstance(model.model.layers[0].self_attn.qkv_proj, Int8Linear)
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 5


@pytest.mark.parametrize("rows", [3, 4, 5, 9])
def test_the_q4_1_kernel_takes_any_number_of_rows(rows: int) -> None:
    """Any number of activation rows, with a partial last block of weight rows (called directly: the
    layer sends it only up to ``C_KERNEL_MAX_ROWS`` rows)."""
    kernel = q4_1_kernel()
    assert kernel is not None
    torch.manual_seed(rows)
    groups = quantize_int4(torch.randn(67, 160))
    layer = Int4Linear(groups)
    x = torch.randn(rows, 160)
    y = torch.full((rows, 67), float("nan"))
    assert kernel(x.data_ptr(), layer.codes.data_ptr(), layer.scales.data_ptr(), y.data_ptr(), rows, 67, 160, 2) == 0
    torch.testing.assert_close(y, q4_1_reference(groups, x, activation_bits() or 32), rtol=1e-5, atol=1e-4)
    assert kernel(x.data_ptr(), layer.codes.data_ptr(), layer.scales.data_ptr(), y.data_ptr(), rows, 67, 150, 2) == -2

