"""Tool calling and structured output for ``/v1/chat/completions``, as OpenAI's API and vLLM do it.

* **Prompt.** A model whose chat template renders ``tools`` gets them through its template
  (``Tokenizer.apply_chat_template(messages, tools=...)``, exactly as transformers renders them).
  A template that ignores tools (SmolLM2's) gets them in a system message in the Hermes format
  (the one Qwen2.5 and vLLM's ``hermes`` parser use): the tools' JSON inside ``<tools>``, and each
  call answered as ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``. Earlier
  assistant tool calls and tool results in ``messages`` are written back in the same format.
* **tool_choice.** ``none``: no tools in the prompt, the answer is text. ``auto``: tools in the
  prompt, the answer is parsed for calls. ``required`` and a named function: the answer is
  *constrained* (grammar-constrained decoding, ``edgecloud.llm.structured``) to one or more calls
  (exactly one when ``parallel_tool_calls`` is false or a function is named) of the offered
  functions, each call's arguments valid against that function's parameter schema (at most
  ``MAX_PARALLEL_CALLS``, so that a model that keeps calling still ends).
* **response_format.** ``json_object``: any JSON object; ``json_schema``: that schema (always
  enforced by the grammar, ``strict`` or not, as vLLM does).
* **Parsing.** ``parse_tool_calls`` splits a finished answer into content and calls;
  ``ToolCallStream`` does it incrementally for streamed deltas: text that may begin a
  ``<tool_call>`` tag is held back, and each call goes out as one ``tool_calls`` delta once its
  closing tag arrives (OpenAI's clients accumulate deltas, so a whole call in one is valid).

Bad tools are a 400 naming the field: an invalid parameter JSON Schema
(``tools[2].function.parameters``), a duplicate or malformed name, an unknown ``tool_choice`` name.
"""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from jsonschema import SchemaError
from jsonschema.validators import validator_for

from edgecloud.llm.structured import StructuredOutputsParams, declare_required, json_schema_text
from edgecloud.server.errors import APIError

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
# Calls in one constrained answer: a bound, so that a model that keeps calling still ends.
MAX_PARALLEL_CALLS = 8
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CALL_BLOCK = re.compile(re.escape(TOOL_CALL_OPEN) + r"\s*(.*?)\s*" + re.escape(TOOL_CALL_CLOSE), re.DOTALL)

TOOLS_SYSTEM_PROMPT = (
    "You can call functions to answer the user. The functions you may call, as JSON:\n"
    "<tools>\n{tools}\n</tools>\n"
    "To call a function, answer with one JSON object per call, each inside its own tags:\n"
    '<tool_call>\n{{"name": <function name>, "arguments": <arguments as a JSON object>}}\n</tool_call>'
)


@dataclass(frozen=True)
class ToolSet:
    """A chat request's validated tools and how they may be used."""

    tools: list[dict[str, Any]]
    choice: str  # none | auto | required | named
    named: str | None = None
    parallel: bool = True

    @property
    def in_prompt(self) -> bool:
        return bool(self.tools) and self.choice != "none"

    @property
    def parses_calls(self) -> bool:
        return self.in_prompt

    def offered(self) -> list[dict[str, Any]]:
        """The tools the answer may call (a named choice narrows them to one)."""
        if self.named is None:
            return self.tools
        return [t for t in self.tools if t["function"]["name"] == self.named]


def validate_tools(tools: list[dict[str, Any]] | None, tool_choice: Any, parallel_tool_calls: bool) -> ToolSet:
    """Checks ``tools`` and ``tool_choice`` as OpenAI does; raises ``APIError`` (400) naming the field."""
    tools = list(tools or [])
    names: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise APIError(400, f"{where} must be {{'type': 'function', 'function': {{...}}}}", where)
        function = tool["function"]
        name = function.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise APIError(400, f"{where}.function.name must match ^[a-zA-Z0-9_-]{{1,64}}$, got {name!r}",
                           f"{where}.function.name")
        if name in names:
            raise APIError(400, f"{where}.function.name {name!r} is given twice", f"{where}.function.name")
        names.add(name)
        parameters = function.get("parameters", {"type": "object", "properties": {}})
        if not isinstance(parameters, dict):
            raise APIError(400, f"{where}.function.parameters must be a JSON Schema object",
                           f"{where}.function.parameters")
        try:
            validator_for(parameters).check_schema(parameters)
        except SchemaError as error:
            path = "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in error.absolute_path)
            raise APIError(400, f"{where}.function.parameters is not a valid JSON Schema: {error.message}"
                           f"{f' (at parameters{path})' if path else ''}", f"{where}.function.parameters") from None
        if parameters.get("type", "object") != "object":
            raise APIError(400, f"{where}.function.parameters must describe an object (type 'object'), "
                           f"got type {parameters.get('type')!r}", f"{where}.function.parameters")
    choice, named = _choice(tool_choice, names, bool(tools))
    return ToolSet([_normalized(t) for t in tools], choice, named, parallel_tool_calls)


def _normalized(tool: dict[str, Any]) -> dict[str, Any]:
    function = dict(tool["function"])
    function.setdefault("parameters", {"type": "object", "properties": {}})
    return {"type": "function", "function": function}


def _choice(tool_choice: Any, names: set[str], have_tools: bool) -> tuple[str, str | None]:
    if tool_choice is None:
        return ("auto" if have_tools else "none"), None
    if isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise APIError(400, f"tool_choice must be 'none', 'auto', 'required' or "
                           f"{{'type': 'function', 'function': {{'name': ...}}}}, got {tool_choice!r}", "tool_choice")
        if tool_choice != "none" and not have_tools:
            raise APIError(400, f"tool_choice {tool_choice!r} needs tools", "tool_choice")
        return tool_choice, None
    name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
    if not isinstance(tool_choice, dict) or tool_choice.get("type") != "function" or not isinstance(name, str):
        raise APIError(400, "tool_choice must be 'none', 'auto', 'required' or "
                       "{'type': 'function', 'function': {'name': ...}}", "tool_choice")
    if name not in names:
        offered = ", ".join(sorted(names)) or "none"
        raise APIError(400, f"tool_choice names function {name!r}, which is not in tools (offered: {offered})",
                       "tool_choice")
    return "named", name


# -- the prompt ---------------------------------------------------------------------------------


def template_renders_tools(chat_templates: dict[str, str]) -> bool:
    """Whether the model's chat template writes ``tools`` itself (else we write the system prompt)."""
    text = chat_templates.get("tool_use") or chat_templates.get("default") or ""
    return "tools" in text


def tools_system_prompt(tools: list[dict[str, Any]]) -> str:
    return TOOLS_SYSTEM_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))


def format_call(name: str, arguments: Any) -> str:
    """One call as the answer writes it (``arguments`` a dict, or its JSON text)."""
    if isinstance(arguments, str):
        with contextlib.suppress(json.JSONDecodeError):
            arguments = json.loads(arguments)
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def prompt_messages(messages: list[dict[str, Any]], tools: ToolSet, template_has_tools: bool) -> list[dict[str, Any]]:
    """The messages to render: with our tool system prompt when the template does not write tools,
    and earlier tool calls written as the answer format."""
    out = []
    for message in messages:
        calls = message.get("tool_calls")
        if calls and not template_has_tools:
            text = "\n".join(format_call(c["function"]["name"], c["function"]["arguments"]) for c in calls)
            content = message.get("content") or ""
            message = {"role": "assistant", "content": f"{content}\n{text}" if content else text}
        out.append(message)
    if tools.in_prompt and not template_has_tools:
        system = tools_system_prompt(tools.tools)
        if out and out[0]["role"] in ("system", "developer"):
            out[0] = {**out[0], "role": "system", "content": f"{out[0].get('content') or ''}\n\n{system}".lstrip()}
        else:
            out.insert(0, {"role": "system", "content": system})
    return out


# -- constrained decoding -----------------------------------------------------------------------


def tool_call_constraint(tools: ToolSet) -> StructuredOutputsParams | None:
    """``required`` or a named function: a structural tag that admits only calls of the offered
    functions with schema-valid arguments (one call, or several separated by a newline)."""
    if tools.choice not in ("required", "named"):
        return None
    tags = [
        {
            "type": "tag",
            "begin": f'{TOOL_CALL_OPEN}\n{{"name": {json.dumps(t["function"]["name"])}, "arguments": ',
            # one whitespace at most between tokens: a small model can loop on spaces otherwise
            # declare_required: xgrammar ignores `required` names that `properties` does not list
            "content": {"type": "json_schema", "json_schema": declare_required(t["function"]["parameters"]),
                        "max_whitespace_cnt": 1},
            "end": f"}}\n{TOOL_CALL_CLOSE}",
        }
        for t in tools.offered()
    ]
    one = {"type": "or", "elements": tags}
    if tools.choice == "named" or not tools.parallel:
        answer: dict[str, Any] = one
    else:
        more = {"type": "sequence", "elements": [{"type": "const_string", "value": "\n"}, one]}
        answer = {"type": "sequence",
                  "elements": [one, {"type": "repeat", "min": 0, "max": MAX_PARALLEL_CALLS - 1, "content": more}]}
    tag = {"type": "structural_tag", "format": answer}
    return StructuredOutputsParams(structural_tag=json.dumps(tag))


def response_format_constraint(response_format: Any) -> StructuredOutputsParams | None:
    """OpenAI's ``response_format`` as a constraint; raises ``APIError`` naming the field."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise APIError(400, "response_format.json_schema must be {'name': ..., 'schema': {...}, 'strict': ...}",
                           "response_format.json_schema")
        if not isinstance(schema, dict):
            raise APIError(400, "response_format.json_schema.schema must be a JSON Schema object",
                           "response_format.json_schema.schema")
        try:
            validator_for(schema).check_schema(schema)
        except SchemaError as error:
            raise APIError(400, f"response_format.json_schema.schema is not a valid JSON Schema: {error.message}",
                           "response_format.json_schema.schema") from None
        return StructuredOutputsParams(json_schema=json_schema_text(schema))
    raise APIError(400, f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}",
                   "response_format")


# -- parsing answers ----------------------------------------------------------------------------


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _call(body: str, known: set[str] | None) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return None
    if known is not None and data["name"] not in known:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    return {
        "id": new_call_id(),
        "type": "function",
        "function": {"name": data["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
    }


def parse_tool_calls(text: str, known: set[str] | None = None) -> tuple[str | None, list[dict[str, Any]]]:
    """``(content, tool_calls)`` of a finished answer. Blocks that do not parse as a call of a
    known function stay in the content, as text (vLLM's hermes parser does the same)."""
    calls: list[dict[str, Any]] = []
    kept: list[str] = []
    last = 0
    for match in _CALL_BLOCK.finditer(text):
        call = _call(match.group(1), known)
        if call is None:
            continue
        calls.append(call)
        kept.append(text[last:match.start()])
        last = match.end()
    if not calls:
        return text, []
    kept.append(text[last:])
    content = "".join(kept).strip()
    return (content or None), calls


@dataclass
class ToolCallStream:
    """Incremental ``parse_tool_calls`` for one streamed choice."""

    known: set[str] | None = None
    buffer: str = ""
    in_call: bool = False
    calls: list[dict[str, Any]] = field(default_factory=list)

    def feed(self, text: str, final: bool = False) -> tuple[str, list[dict[str, Any]]]:
        """New content to send and calls completed by this delta (``final``: the stream ended,
        flush what was held back)."""
        self.buffer += text
        content: list[str] = []
        done: list[dict[str, Any]] = []
        while True:
            if not self.in_call:
                start = self.buffer.find(TOOL_CALL_OPEN)
                if start < 0:
                    keep = 0 if final else _partial_prefix(self.buffer, TOOL_CALL_OPEN)
                    content.append(self.buffer[: len(self.buffer) - keep])
                    self.buffer = self.buffer[len(self.buffer) - keep:]
                    break
                content.append(self.buffer[:start])
                self.buffer = self.buffer[start:]
                self.in_call = True
            end = self.buffer.find(TOOL_CALL_CLOSE)
            if end < 0:
                if final:  # an unclosed call stays text, as in the unstreamed answer
                    content.append(self.buffer)
                    self.buffer = ""
                break
            block = self.buffer[: end + len(TOOL_CALL_CLOSE)]
            self.buffer = self.buffer[end + len(TOOL_CALL_CLOSE):]
            self.in_call = False
            call = _call(block[len(TOOL_CALL_OPEN): -len(TOOL_CALL_CLOSE)].strip(), self.known)
            if call is None:
                content.append(block)
            else:
                done.append(call)
        self.calls.extend(done)
        text_out = "".join(content)
        if self.calls and not text_out.strip():
            text_out = ""  # whitespace between calls is not content
        return text_out, done


def _partial_prefix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0
