"""Grammar-constrained decoding: every output of a structured request matches its grammar, whatever
the model (here the embedded demo model, which knows no JSON), across sampling, n > 1 and batching
with unconstrained requests; the spec crosses the process boundary; bad grammars are refused."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.llm import LLM, InvalidRequestError, SamplingParams
from edgecloud.llm.demo_model import DEMO_MODEL_DIR
from edgecloud.llm.messages import AddRequests, decode_to_core, encode
from edgecloud.llm.request import EngineCoreRequest
from edgecloud.llm.structured import (
    StructuredOutputs,
    StructuredOutputsParams,
    declare_required,
    json_schema_text,
    unpack_bitmask,
)

# Bounded: enums, booleans and short strings, so even a model that never chooses to stop must
# complete the object within max_tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "ok": {"type": "boolean"},
        "name": {"type": "string", "maxLength": 6},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
    },
    "required": ["color", "ok", "name"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def llm() -> LLM:
    return LLM(model="demo", num_threads=1, kv_cache_memory_mb=16, seed=0)


def _params(**kwargs: object) -> SamplingParams:
    spec = StructuredOutputsParams(json_schema=json_schema_text(SCHEMA))
    return SamplingParams(max_tokens=120, structured_outputs=spec, **kwargs)  # type: ignore[arg-type]


def test_every_output_matches_the_schema_greedy_sampled_and_batched(llm: LLM) -> None:
    prompts = ["A fool and his money", "The answer is", "Tomorrow", "Once upon a time", "Hello"]
    params = [_params(temperature=0), _params(temperature=0), _params(temperature=1.0, seed=1),
              _params(temperature=1.2), SamplingParams(max_tokens=8, temperature=0)]
    outs = llm.generate(prompts, params)
    for out in outs[:4]:
        completion = out.outputs[0]
        assert completion.finish_reason == "stop", completion
        jsonschema.validate(json.loads(completion.text), SCHEMA)
    # the unconstrained request batched beside them is untouched: free text, stopped by length
    assert outs[4].outputs[0].finish_reason == "length"


def test_n_samples_each_follow_their_own_matcher(llm: LLM) -> None:
    out = llm.generate(["Hello"], _params(temperature=1.5, n=3, seed=3))[0]
    texts = [c.text for c in out.outputs]
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert len(set(texts)) > 1  # three independent samples, not one matcher shared


def test_required_names_without_properties_are_enforced(llm: LLM) -> None:
    # a held-out BFCL function's parameter: 'required' names that 'properties' does not list
    schema = {"type": "object", "properties": {"population": {"type": "object", "required": ["adults"]}},
              "required": ["population"]}
    assert declare_required(schema)["properties"]["population"]["properties"] == {"adults": {}}
    spec = StructuredOutputsParams(json_schema=json_schema_text(schema))
    outs = llm.generate(["Hello", "The answer is"],
                        [SamplingParams(max_tokens=60, temperature=t, seed=1, structured_outputs=spec) for t in (0, 1)])
    for out in outs:
        if out.outputs[0].finish_reason == "stop":
            jsonschema.validate(json.loads(out.outputs[0].text), schema)
        assert out.outputs[0].text.startswith('{"population": {"adults": ')


def test_ebnf_grammar_and_json_object(llm: LLM) -> None:
    yes_no = SamplingParams(max_tokens=10, temperature=1.0, seed=1,
                            structured_outputs=StructuredOutputsParams(grammar='root ::= "yes" | "no"'))
    outs = llm.generate(["Is it raining?"] * 4, yes_no)
    assert {o.outputs[0].text for o in outs} <= {"yes", "no"}
    obj = SamplingParams(max_tokens=200, temperature=0, structured_outputs=StructuredOutputsParams(json_object=True))
    text = llm.generate(["Say it in JSON:"], obj)[0].outputs[0]
    # an unbounded object that runs into max_tokens is closed in time (budget-aware completion)
    assert isinstance(json.loads(text.text), dict), text


# Unbounded: free strings, a list of numbers, a nested object with required members: a model that
# never chooses to stop (the demo model) runs into max_tokens inside some value.
UNBOUNDED = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "xs": {"type": "array", "items": {"type": "number"}},
        "inner": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "string"}},
                  "required": ["a", "b"]},
    },
    "required": ["name", "xs", "inner"],
}


def _backend(llm: LLM) -> StructuredOutputs:
    return llm.engine.core.executor.structured  # type: ignore[attr-defined, no-any-return]


def test_an_answer_cut_by_max_tokens_is_still_a_complete_document(llm: LLM) -> None:
    spec = StructuredOutputsParams(json_schema=json_schema_text(UNBOUNDED))
    backend = _backend(llm)
    closing = backend.closing(backend.start(spec))
    assert closing is not None and closing.text == b'{"inner": {"a": 0, "b": ""}, "name": "", "xs": []}'
    shortest = len(closing.tokens)
    params = [SamplingParams(max_tokens=budget, temperature=temperature, seed=seed, structured_outputs=spec)
              for budget in (shortest, shortest + 3, 70)
              for temperature, seed in ((0.0, None), (1.0, 1), (1.5, 2))]
    outs = llm.generate(["Hello", "The answer is", "Once upon a time"] * 3, params)
    for out, p in zip(outs, params, strict=True):
        c = out.outputs[0]
        assert len(c.token_ids) <= p.max_tokens
        jsonschema.validate(json.loads(c.text), UNBOUNDED)  # complete and valid, cut or not
        if p.max_tokens == shortest:  # the whole budget is the shortest document
            assert c.text == closing.text.decode() and c.finish_reason == "length"
    cut = [o.outputs[0] for o in outs if o.outputs[0].finish_reason == "length"]
    assert len(cut) >= 6 and any(len(c.text) > 80 for c in cut)  # the model wrote, then was closed


def test_a_budget_below_the_shortest_document_is_refused_naming_max_tokens(llm: LLM) -> None:
    schema = {"type": "object", "properties": {"s": {"type": "string"}}, "required": ["s"]}
    spec = StructuredOutputsParams(json_schema=json_schema_text(schema))
    need = len(_backend(llm).tokenize(b'{"s": ""}'))
    with pytest.raises(InvalidRequestError) as info:
        llm.generate(["Hello"], SamplingParams(max_tokens=need - 1, structured_outputs=spec))
    assert info.value.param == "max_tokens"
    assert f"max_tokens={need - 1} cannot hold" in str(info.value) and f"""'{{"s": ""}}', takes {need} tokens""" in str(
        info.value)
    out = llm.generate(["Hello"], SamplingParams(max_tokens=need, structured_outputs=spec))[0].outputs[0]
    assert (out.text, out.finish_reason) == ('{"s": ""}', "length")


@pytest.mark.parametrize(("prefix", "closing"), [
    ('', '{"inner": {"a": 0, "b": ""}, "name": "", "xs": []}'),
    ('{"inner": {"a": 12', ', "b": ""}, "name": "", "xs": []}'),  # past the digits, not more of them
    ('{"inner": {"a": 1, "b": "abc\\', '""}, "name": "", "xs": []}'),  # the escape first
    ('{"inner": {"a": 1, "b": "x"}, "name": "\u00e9', '", "xs": []}'),
    ('{"inner": {"a": 1, "b": "x"}, "name": "", "xs": [1.5, -2', ']}'),
    ('{"inner": {"a": 1, "b": "x"}, "name": "", "xs": [1.', '0]}'),
])
def test_the_closing_path_completes_the_document_from_any_state(prefix: str, closing: str) -> None:
    backend = StructuredOutputs(DEMO_MODEL_DIR / "tokenizer.json", 4096, [2])
    state = backend.start(StructuredOutputsParams(json_schema=json_schema_text(UNBOUNDED)))
    assert state.matcher.accept_string(prefix.encode()) or not prefix
    path = backend.closing(state)
    assert path is not None and path.text.decode() == closing
    jsonschema.validate(json.loads(prefix + closing), UNBOUNDED)
    assert b"".join(backend._token_bytes[t] for t in path.tokens) == path.text
    found = backend._shortest(state.matcher)  # the breadth-first search agrees on these
    assert found is None or len(found[0]) == len(path.text)


def test_the_budget_rule_does_no_costly_work_per_token_while_far_from_the_budget() -> None:
    """Far from ``max_tokens`` the closing path is carried from token to token (its rest, or the
    same bytes when they still complete): no breadth-first search at all and a closer walk only
    where the model leaves the path's structure, not per token; near the budget the search runs."""
    backend = StructuredOutputs(DEMO_MODEL_DIR / "tokenizer.json", 4096, [2])
    spec = StructuredOutputsParams(json_schema=json_schema_text(UNBOUNDED))
    text = '{"inner": {"a": 12, "b": "' + "a long value, written on and on " * 16 + '"}, "name": "x", "xs": [1, 2.5]}'
    tokens = backend.tokenize(text.encode())
    assert len(tokens) > 150
    backend.stats.clear()
    budget = 10 * len(tokens)
    state = backend.start(spec, budget)
    for i, token in enumerate(tokens):
        assert unpack_bitmask(backend.bitmask([state], [budget - i]), backend.vocab_size)[0, token]
        assert backend.accept(state, token, budget - i) is None
    assert state.matcher.is_completed()
    assert backend.stats["searches"] == 0, dict(backend.stats)
    assert backend.stats["closer"] <= 12, dict(backend.stats)  # at the start, then where the structure moved
    state = backend.start(spec, budget)  # near the budget: the path takes all the tokens left
    for i, token in enumerate(tokens[:60]):
        backend.accept(state, token, budget - i)
    closing = backend.closing(state)
    assert closing is not None
    backend.bitmask([state], [len(closing.tokens)])
    assert backend.stats["searches"] == 1, dict(backend.stats)


def test_a_sampled_token_that_leaves_no_room_to_close_is_replaced_by_the_closing_path() -> None:
    backend = StructuredOutputs(DEMO_MODEL_DIR / "tokenizer.json", 4096, [2])
    schema = {"type": "object", "properties": {"items": {"type": "array", "items": {
        "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}, "required": ["items"]}
    spec = StructuredOutputsParams(json_schema=json_schema_text(schema))
    brace = backend.tokenize(b"{")[0]
    for budget, replaced in ((100, False), (4, True)):
        state = backend.start(spec)
        assert state.matcher.accept_string(b'{"items": [')
        before = backend.closing(state)
        assert before is not None and before.text == b"]}" and len(before.tokens) < 4
        # '{' opens an object that needs '"a": 0}' before the array can close
        assert backend.accept(state, brace, budget) == (before.tokens[0] if replaced else None)
        after = backend.closing(state)
        assert after is not None and len(after.tokens) <= budget - 1
        assert after.text == (b"}" if replaced else b'"a": 0}]}')


def test_a_complete_document_that_could_go_on_ends_when_going_on_would_not_fit() -> None:
    # e.g. tool calls: after one complete call another may follow; with no room to close it, EOS
    backend = StructuredOutputs(DEMO_MODEL_DIR / "tokenizer.json", 4096, [2])
    spec = StructuredOutputsParams(grammar='root ::= "a" ("," "[1, 2, 3, 4, 5, 6, 7, 8]")?')
    comma = backend.tokenize(b",")[0]
    for budget, replaced in ((30, None), (2, 2)):
        state = backend.start(spec, budget)
        assert backend.accept(state, backend.tokenize(b"a")[0], budget) is None
        assert backend.accept(state, comma, budget - 1) == replaced
        assert state.matcher.is_terminated() == (replaced is not None)


def test_bad_specs_are_refused_naming_the_field(llm: LLM) -> None:
    with pytest.raises(InvalidRequestError) as info:
        StructuredOutputsParams(json_schema="{}", json_object=True)
    assert info.value.param == "structured_outputs"
    with pytest.raises(InvalidRequestError) as info:
        bad = StructuredOutputsParams(grammar="root ::= undefined_rule")
        llm.generate(["x"], SamplingParams(structured_outputs=bad))
    assert info.value.param == "structured_outputs"
    with pytest.raises(InvalidRequestError) as info:
        StructuredOutputsParams(json_schema="[1, 2").check()
    assert "json_schema" in str(info.value)
    # the engine still serves after refusing
    assert llm.generate(["Hello"], _params(temperature=0))[0].outputs[0].finish_reason == "stop"


def test_the_spec_crosses_the_process_boundary() -> None:
    spec = StructuredOutputsParams(json_schema=json_schema_text(SCHEMA))
    req = EngineCoreRequest(request_id="r", prompt_token_ids=[1, 2], arrival_time=0.0,
                            params=SamplingParams(structured_outputs=spec))
    decoded = decode_to_core(encode(AddRequests([req])))
    assert isinstance(decoded, AddRequests)
    assert decoded.requests[0].params.structured_outputs == spec


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 99), max_size=20), st.integers(1, 100))
def test_unpack_bitmask_allows_exactly_the_set_bits(allowed: list[int], vocab: int) -> None:
    words = torch.zeros(1, (vocab + 31) // 32, dtype=torch.int64)
    for t in allowed:
        if t < vocab:
            words[0, t // 32] |= 1 << (t % 32)
    mask = unpack_bitmask(words.to(torch.int64).apply_(lambda w: w - (1 << 32) if w >= 1 << 31 else w)
                          .to(torch.int32), vocab)
    assert mask.shape == (1, vocab)
    assert set(mask[0].nonzero().flatten().tolist()) == {t for t in allowed if t < vocab}
