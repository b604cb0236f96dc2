"""BFCL questions as the chat requests the agents receive and the answers they are trained on.

A request is what any OpenAI client would send (``messages`` and ``tools``); its prompt is what our
server renders for it (``edgecloud.server.tools``: the tools in a Hermes-style system prompt for
SmolLM2, whose template ignores tools), so training sees exactly the tokens serving sees. The
target answer writes each call as ``<tool_call>\\n{"name", "arguments"}\\n</tool_call>`` with the
arguments in the order of the function's schema (the order constrained decoding enforces).
"""

from __future__ import annotations

from typing import Any

from edgecloud.edge.netgpt.bfcl import Question
from edgecloud.llm.tokenizer import Tokenizer
from edgecloud.server.tools import format_call, prompt_messages, template_renders_tools, validate_tools


def chat_request(question: Question, model: str, **options: Any) -> dict[str, Any]:
    """The OpenAI chat request for a question (``options``: tool_choice, max_tokens, ...)."""
    return {"model": model, "messages": question.messages, "tools": question.tools, **options}


def ordered_calls(question: Question, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Calls with their arguments in the order of the function's schema properties."""
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in question.tools}
    out = []
    for call in calls:
        order = list(schemas.get(call["name"], {}).get("properties", {}))
        args = call["arguments"]
        ranked = sorted(args, key=lambda k: order.index(k) if k in order else len(order))
        out.append({"name": call["name"], "arguments": {k: args[k] for k in ranked}})
    return out


def target_text(question: Question) -> str:
    """The answer the edge and cloud models are fine-tuned to give (one correct answer)."""
    return "\n".join(format_call(c["name"], c["arguments"]) for c in ordered_calls(question, question.target_calls()))


def prompt_text(tokenizer: Tokenizer, question: Question) -> str:
    """The prompt our server renders for ``chat_request(question)`` with ``tool_choice`` auto."""
    tools = validate_tools(question.tools, None, True)
    has_tools = template_renders_tools(tokenizer.chat_templates)
    messages = prompt_messages([dict(m) for m in question.messages], tools, has_tools)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                         tools=tools.tools if has_tools else None)
