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
from edgecloud.llm.messages import AddRequests, decode_to_core, encode
from edgecloud.llm.request import EngineCoreRequest
from edgecloud.llm.structured import StructuredOutputsParams, declare_required, json_schema_text, unpack_bitmask

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
    if text.finish_reason == "stop":
        assert isinstance(json.loads(text.text), dict)
    else:  # an unbounded object may run out of tokens; what was written is still a valid prefix
        assert text.text.startswith("{")


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
