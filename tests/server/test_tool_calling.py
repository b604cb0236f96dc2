"""Tool calling and structured output through the official ``openai`` client against a real
``edgecloud serve`` (a random-weight model: it knows no tools, so every call it makes comes from
grammar-constrained decoding, and every answer must still follow the schemas)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from .conftest import ServerProcess

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Paris", "Oslo", "Lima"]},
        "unit": {"enum": ["c", "f"]},
        "alerts": {"type": "boolean"},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 5}}, "required": ["zone"],
        "additionalProperties": False}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                      "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Time in a zone", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
MESSAGES = [{"role": "user", "content": "What is the weather in Oslo?"}]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def check_calls(calls: list[tuple[str, str]]) -> None:
    assert calls
    for name, arguments in calls:
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def test_required_tool_calls_unstreamed(client: openai.OpenAI, server: ServerProcess) -> None:
    for seed in range(3):
        # one call: a random model given parallel calls may keep calling up to the bound (8), past
        # this small model's context (the parallel grammar is tested in test_tools.py)
        reply = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=TOOLS,
                                               tool_choice="required", parallel_tool_calls=False, temperature=1.0,
                                               seed=seed, max_tokens=200)
        choice = reply.choices[0]
        assert choice.finish_reason == "tool_calls"
        calls = choice.message.tool_calls or []
        check_calls([(c.function.name, c.function.arguments) for c in calls])
        assert all(c.id.startswith("call_") and c.type == "function" for c in calls)
        assert len({c.id for c in calls}) == len(calls)


def test_required_tool_calls_streamed_equal_unstreamed(client: openai.OpenAI, server: ServerProcess) -> None:
    kwargs = {"model": server.model, "messages": MESSAGES, "tools": TOOLS, "tool_choice": "required",
              "parallel_tool_calls": False, "temperature": 0, "max_tokens": 200}
    whole = client.chat.completions.create(**kwargs).choices[0]
    chunks = list(client.chat.completions.create(stream=True, **kwargs))
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in chunks:
        delta = chunk.choices[0].delta
        for tc in delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"name": "", "arguments": ""})
            entry["name"] += tc.function.name or ""
            entry["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    streamed = [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)]
    check_calls(streamed)
    assert streamed == [(c.function.name, c.function.arguments) for c in whole.message.tool_calls or []]


def test_named_function_and_no_parallel_give_one_call(client: openai.OpenAI, server: ServerProcess) -> None:
    reply = client.chat.completions.create(
        model=server.model, messages=MESSAGES, tools=TOOLS, temperature=1.0, seed=5, max_tokens=200,
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    calls = reply.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_time"]
    check_calls([(c.function.name, c.function.arguments) for c in calls])
    reply = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=TOOLS, seed=6,
                                           tool_choice="required", parallel_tool_calls=False, max_tokens=200)
    assert len(reply.choices[0].message.tool_calls or []) == 1


def test_response_format_json_schema_and_json_object(client: openai.OpenAI, server: ServerProcess) -> None:
    for seed in range(3):
        reply = client.chat.completions.create(
            model=server.model, messages=MESSAGES, temperature=1.0, seed=seed, max_tokens=200,
            response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": True}},
        )
        assert reply.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(reply.choices[0].message.content or ""), WEATHER)
    reply = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=40, temperature=0,
                                           response_format={"type": "json_object"})
    # a JSON object, complete even when max_tokens cut it (budget-aware completion, llm/structured.py)
    assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)


def test_auto_and_none_answer_text_when_no_call_is_made(client: openai.OpenAI, server: ServerProcess) -> None:
    plain = client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=8, temperature=0)
    auto = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=TOOLS, max_tokens=8,
                                          temperature=0)
    none = client.chat.completions.create(model=server.model, messages=MESSAGES, tools=TOOLS, tool_choice="none",
                                          max_tokens=8, temperature=0)
    assert auto.usage is not None and plain.usage is not None and none.usage is not None
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens  # the tools are in the prompt
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens  # and not with tool_choice none
    assert none.choices[0].message.content == plain.choices[0].message.content
    assert not auto.choices[0].message.tool_calls and auto.choices[0].finish_reason == "length"


def test_a_conversation_with_tool_calls_and_results_is_accepted(client: openai.OpenAI, server: ServerProcess) -> None:
    messages = [*MESSAGES,
                {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function",
                     "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "c"}'}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "-3 C, snow"}]
    reply = client.chat.completions.create(model=server.model, messages=messages, tools=TOOLS, max_tokens=4)
    assert reply.choices[0].message.role == "assistant"


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "integr"}}}}}]},
     "tools[0].function.parameters", "not a valid JSON Schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]},
     "tools[0].function.parameters", "must describe an object"),
    ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name", "must match"),
    ({"tools": TOOLS + TOOLS[:1]}, "tools[2].function.name", "given twice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_tme"}}}, "tool_choice",
     "not in tools (offered: get_time, get_weather)"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "must be 'none', 'auto', 'required'"),
    ({"tool_choice": "required"}, "tool_choice", "needs tools"),
    ({"response_format": {"type": "xml"}}, "response_format", "must be 'text', 'json_object' or 'json_schema'"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
     "response_format.json_schema.schema", "not a valid JSON Schema"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format",
     "cannot be combined"),
    # max_tokens (4 here) cannot hold even the shortest complete answer
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": True}}},
     "max_tokens", "cannot hold a complete json_schema output"),
    ({"tools": TOOLS, "tool_choice": "required"}, "max_tokens", "cannot hold a complete structural_tag output"),
])
def test_bad_tools_and_formats_are_400s_naming_the_field(server: ServerProcess, body: dict, param: str,
                                                        words: str) -> None:
    reply = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=30,
                       json={"model": server.model, "messages": MESSAGES, "max_tokens": 4, **body})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and words in error["message"], error
    # and the server keeps serving
    assert httpx.get(f"{server.base_url}/health", timeout=10).status_code == 200
