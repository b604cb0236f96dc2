"""The one-call decoder (llm/quant/decode_stack.py) against the engine's module path, int4 and float32."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgecloud.llm import LLM, SamplingParams
from edgecloud.llm.outputs import OutputKind
from edgecloud.llm.quant import decode_stack, quantize_model
from edgecloud.llm.quant.linear import layer_kernel
from edgecloud.llm.random_model import write_random_model
from edgecloud.llm.step_context import StepContext

pytestmark = pytest.mark.skipif(
    layer_kernel() is None or decode_stack.kernel() is None,
    reason="needs a C compiler and AVX-512 VNNI (the int8 build of the int4 kernels)",
)

PROMPT = [5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23]  # crosses a block


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # hidden 160 = 5 groups of 32 and intermediate 224 = 7: both end in a partial chunk of 4 groups;
    # 5 query heads share one KV head
    # tied embeddings, as SmolLM2: the float32 stack reads its LM head from the embedding
    return write_random_model(tmp_path_factory.mktemp("stack") / "llama", hidden_size=160, intermediate_size=224,
                              num_attention_heads=5, num_key_value_heads=1, num_hidden_layers=3,
                              tie_word_embeddings=True)


def _int4_llm(model_dir: Path, weights: str = "int4") -> LLM:
    llm = LLM(model=str(model_dir), dtype="float32", kv_cache_memory_mb=2, enable_prefix_caching=False)
    if weights == "int4":
        quantize_model(llm.engine.core.executor.model, "int4")
    return llm


def _greedy(n: int) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


def _restore(model: torch.nn.Module, caches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    for layer, (k, v) in zip(model.model.layers, caches, strict=True):
        layer.self_attn.kv_cache[0].copy_(k)
        layer.self_attn.kv_cache[1].copy_(v)


@pytest.mark.parametrize("weights", ["int4", "float32"])
def test_each_layer_computes_what_the_modules_compute(model_dir: Path, weights: str) -> None:
    """From the same hidden state and cache, every layer's output and the K/V it writes agree with the
    modules' (float32 summation order, and the int8 roundings it moves); all layers in one call equal
    the layers one call each, bit for bit."""
    llm = _int4_llm(model_dir, weights)
    model = llm.engine.core.executor.model
    checked: list[int] = []
    errors: list[float] = []
    head_errors: list[float] = []
    forward = model.forward

    def check(input_ids: torch.Tensor, positions: torch.Tensor, ctx: StepContext, rows: torch.Tensor) -> torch.Tensor:
        stack = ctx.decode_stack
        if stack is not None:
            caches = [tuple(c.clone() for c in layer.self_attn.kv_cache) for layer in model.model.layers]
            slot = int(ctx.attention[0].slot_mapping[0])
            hidden = model.model.embed_tokens(input_ids)
            for i, layer in enumerate(model.model.layers):
                _restore(model, caches)
                expected = layer(positions, hidden.clone(), ctx)
                k_expected, v_expected = (c.view(-1, c.shape[-2] * c.shape[-1])[slot].clone()
                                          for c in layer.self_attn.kv_cache)
                _restore(model, caches)
                got = hidden.clone()
                stack(got, positions, ctx, i, i + 1)
                k_got, v_got = (c.view(-1, c.shape[-2] * c.shape[-1])[slot] for c in layer.self_attn.kv_cache)
                # float32 summation order moves an activation across an int8 rounding boundary now and
                # then (one step of max|x| / 127 in one input of a product), so compare the layer's
                # update as a whole: ~1e-3 of its norm here; a wrong rotation, slot, head mapping or
                # norm is off by O(1)
                error = float((got - expected).norm() / (expected - hidden).norm())
                errors.append(error)
                assert error < 2e-2, (i, error)
                torch.testing.assert_close(k_got, k_expected, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(v_got, v_expected, rtol=1e-5, atol=1e-5)
                hidden = expected
            chained = model.model.embed_tokens(input_ids)
            _restore(model, caches)
            for i in range(len(model.model.layers)):
                stack(chained, positions, ctx, i, i + 1)
            at_once = model.model.embed_tokens(input_ids)
            _restore(model, caches)
            stack(at_once, positions, ctx, 0, len(model.model.layers))
            assert torch.equal(at_once, chained)
            # with the final norm and LM head folded in (int4 head, or float32 tied to the embedding)
            _restore(model, caches)
            folded = model.model.embed_tokens(input_ids)
            logits = stack(folded, positions, ctx, 0, len(model.model.layers), logits=True)
            assert logits is not None and torch.equal(folded, at_once)
            expected_logits = model.lm_head(model.model.norm(at_once)).float()
            head_errors.append(float((logits - expected_logits).norm() / expected_logits.norm()))
            checked.append(int(positions[0]))
        return forward(input_ids, positions, ctx, rows)

    model.forward = check
    llm.generate([PROMPT], _greedy(6))
    assert checked == list(range(len(PROMPT), len(PROMPT) + 5))  # every decode step, across a block boundary
    print(f"relative error of a layer's update: max {max(errors):.2e}, median {sorted(errors)[len(errors) // 2]:.2e};"
          f" of the logits: max {max(head_errors):.2e}")
    assert max(head_errors) < 2e-2
    if weights == "float32":  # no rounding to move: float32 summation order only
        assert max(errors) < 1e-4 and max(head_errors) < 1e-5


def test_one_stream_decode_runs_through_the_stack_and_keeps_the_greedy_output(model_dir: Path) -> None:
    llm = _int4_llm(model_dir)
    runner = llm.engine.core.executor
    used: list[bool] = []
    forward = runner.model.forward

    def spy(input_ids: torch.Tensor, positions: torch.Tensor, ctx: StepContext, rows: torch.Tensor) -> torch.Tensor:
        used.append(ctx.decode_stack is not None)
        return forward(input_ids, positions, ctx, rows)

    runner.model.forward = spy
    with_stack = llm.generate([PROMPT], _greedy(12))[0].outputs[0].token_ids
    assert used == [False] + [True] * 11  # the prefill, then every decode step
    # the same answer with the stack turned off, as far as the two stay on the same inputs: the
    # products of both round activations to int8, so a different float32 summation order can flip a
    # rounding, and on this random model that changes the 12th greedy token (a near-tie)
    runner._decode_stack = lambda ctx: None
    assert llm.generate([PROMPT], _greedy(12))[0].outputs[0].token_ids[:10] == with_stack[:10]
    # steps it does not take: two sequences decoding together
    used.clear()
    runner._decode_stack = type(runner)._decode_stack.__get__(runner)
    llm.generate([PROMPT, PROMPT[:-1]], _greedy(3))
    assert not any(used)


def test_a_step_that_may_be_dropped_runs_layer_by_layer(model_dir: Path) -> None:
    """A flex request's steps run the stack one layer a call, asking between layers; a step dropped
    half way is recomputed, and the answer is the one-call answer (the same arithmetic)."""
    llm = _int4_llm(model_dir)
    expected = llm.generate([PROMPT], _greedy(8))[0].outputs[0].token_ids
    engine = llm.engine
    asked: list[int] = []

    def interrupt() -> bool:
        asked.append(1)
        return len(asked) == 4  # the first decode step, after its second layer

    engine.core.interrupt = interrupt
    engine.add_request("flex", PROMPT, _greedy(8), service_tier="flex", output_kind=OutputKind.FINAL_ONLY)
    done = {}
    while engine.has_unfinished():
        for out in engine.step():
            done[out.request_id] = out.outputs[0].token_ids
    assert done["flex"] == expected
    assert engine.core.num_abandoned_steps == 1
    assert len(asked) == 2 + 2 + 7 * 2  # the prefill, the dropped step, then 7 decode steps: 2 asks each


def test_models_it_does_not_describe_keep_the_module_path(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    llm = LLM(model=str(model_dir), dtype="float32", kv_cache_memory_mb=2)
    model = llm.engine.core.executor.model
    assert decode_stack.unsupported(model) is None  # float32
    monkeypatch.setenv("EDGECLOUD_DECODE_STACK", "0")
    assert "turned off" in decode_stack.unsupported(model)
    monkeypatch.delenv("EDGECLOUD_DECODE_STACK")
    quantize_model(model, "int8")
    assert "not all int4" in decode_stack.unsupported(model)
    with pytest.raises(ValueError, match="cannot run this model"):
        decode_stack.DecodeStack(model, (0, 0, 0), 16)
    bf16 = LLM(model=str(model_dir), dtype="bfloat16", kv_cache_memory_mb=2).engine.core.executor.model
    assert decode_stack.unsupported(bf16) is not None


def test_perplexity_through_one_token_steps_is_the_same_with_and_without_the_stack(model_dir: Path) -> None:
    from edgecloud.llm.quant.perplexity import perplexity

    llm = _int4_llm(model_dir)
    runner = llm.engine.core.executor
    tokens = [int(t) for t in torch.randint(2, 300, (40,), generator=torch.Generator().manual_seed(0))]
    prefill, modules, stack = (perplexity(runner, tokens, window=20, path=p) for p in ("prefill", "modules", "stack"))
    assert abs(stack / modules - 1) < 0.01  # the same products; roundings moved by summation order
    assert abs(modules / prefill - 1) < 0.06  # int8 activations (one row) against bf16 (prefill's kernel)
    with pytest.raises(ValueError, match="path must be one of"):
        perplexity(runner, tokens, path="fast")


def test_the_step_breakdown_says_when_the_head_ran_inside_the_one_call(model_dir: Path) -> None:
    from edgecloud.llm.bench_peer import step_breakdown

    engine = _int4_llm(model_dir).engine
    one = step_breakdown(engine, [PROMPT], 6)
    assert one.lm_head_ms is None and one.layers_ms > 0  # folded: no separate head time to report
    two = step_breakdown(engine, [PROMPT, PROMPT[:-2]], 6)
    assert two.lm_head_ms is not None and two.lm_head_ms > 0
