"""The tool-call parser, unstreamed and streamed, in any split of the text."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from edgecloud.server.tools import ToolCallStream, format_call, parse_tool_calls, prompt_messages, validate_tools

CALLS = format_call("f", {"x": 1}) + "\n" + format_call("g", '{"y": "a<b"}')


def test_parse_calls_and_content() -> None:
    content, calls = parse_tool_calls("Sure.\n" + CALLS, {"f", "g"})
    assert content == "Sure."
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == [
        ("f", {"x": 1}), ("g", {"y": "a<b"})]
    # unknown functions and broken JSON stay text
    text = format_call("h", {}) + "<tool_call>\n{not json}\n</tool_call>"
    assert parse_tool_calls(text, {"f"}) == (text, [])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, len(CALLS) + 7), max_size=12))
def test_streamed_parse_equals_unstreamed_for_any_split(cuts: list[int]) -> None:
    text = "Hi <tool" + CALLS + " bye"
    stream = ToolCallStream({"f", "g"})
    pieces, start = [], 0
    for cut in sorted(set(cuts)):
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    content, names = "", []
    for i, piece in enumerate(pieces):
        out, calls = stream.feed(piece, final=i == len(pieces) - 1)
        content += out
        names += [c["function"]["name"] for c in calls]
    whole_content, whole_calls = parse_tool_calls(text, {"f", "g"})
    assert names == [c["function"]["name"] for c in whole_calls] == ["f", "g"]
    assert content.replace("\n", "").strip() == (whole_content or "").replace("\n", "").strip()


def test_tools_go_into_a_system_prompt_when_the_template_ignores_them() -> None:
    tools = validate_tools([{"type": "function", "function": {"name": "f"}}], None, True)
    messages = prompt_messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                               tools, template_has_tools=False)
    assert messages[0]["content"].startswith("Be brief.\n\n") and '"name": "f"' in messages[0]["content"]
    assert prompt_messages([{"role": "user", "content": "hi"}], tools, template_has_tools=True) == [
        {"role": "user", "content": "hi"}]


def test_required_grammar_admits_parallel_calls_up_to_the_bound_and_valid_arguments_only() -> None:
    from edgecloud.llm.demo_model import DEMO_MODEL_DIR
    from edgecloud.llm.structured import StructuredOutputs
    from edgecloud.server.tools import MAX_PARALLEL_CALLS, tool_call_constraint

    schema = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    tools = [{"type": "function", "function": {"name": n, "parameters": schema}} for n in ("f", "g")]
    backend = StructuredOutputs(DEMO_MODEL_DIR / "tokenizer.json", 4096, [2])

    def accepts(text: str, choice: object = "required", parallel: bool = True) -> bool:
        matcher = backend.new_matcher(tool_call_constraint(validate_tools(tools, choice, parallel)))
        return bool(matcher.accept_string(text)) and matcher.is_completed()

    def calls(n: int, name: str = "f") -> str:
        return "\n".join(format_call(name, {"x": i}) for i in range(n))

    assert accepts(calls(1)) and accepts(calls(2)) and accepts(calls(MAX_PARALLEL_CALLS))
    assert not accepts(calls(MAX_PARALLEL_CALLS + 1))
    assert not accepts(calls(2), parallel=False)
    assert not accepts(format_call("f", {"x": "one"}))  # arguments must follow the schema
    assert not accepts(format_call("h", {"x": 1}))  # only offered functions
    named = {"type": "function", "function": {"name": "g"}}
    assert accepts(calls(1, "g"), named) and not accepts(calls(1, "f"), named)

    # `required` names that `properties` does not list are enforced in tool calls too (xgrammar alone
    # let `{"p": {}}` through; a held-out BFCL function has such a parameter)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"p": {"type": "object", "required": ["adults"]}}, "required": ["p"]}}}]
    assert accepts(format_call("f", {"p": {"adults": 2}}))
    assert not accepts(format_call("f", {"p": {}}))
