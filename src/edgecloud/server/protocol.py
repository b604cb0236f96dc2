"""Request bodies of the OpenAI API (completions and chat completions) as strict pydantic models,
and their translation into the engine's ``SamplingParams``.

Models are strict (a string is not an integer, a boolean is not a number), as OpenAI's API is,
so a client bug surfaces as a 400 naming the field rather than as a silently coerced value.
Unknown fields are ignored, so clients that send newer options keep working. vLLM's extension
fields (``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``, ``stop_token_ids``, ...)
and our ``priority`` are accepted too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from edgecloud.llm import SamplingParams

MAX_STOP_STRINGS = 16


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(strict=True, extra="ignore")

    model: str
    n: int = Field(1, ge=1, le=128)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP_STRINGS)] | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # Extensions (vLLM's names), and the engine's scheduling priority: smaller is more urgent.
    top_k: int = Field(0, ge=-1)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    ignore_eos: bool = False
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    priority: int = 0
    # OpenAI's map of token ids (as strings) to a bias in [-100, 100] added to their logits.
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    # OpenAI's processing tier: default (auto) is online work; flex is latency-relaxed, best-effort
    # work that online requests preempt. scale/priority are not offered here.
    service_tier: Literal["auto", "default", "flex"] | None = None
    # vLLM's per-tenant salt: requests with different salts never share cached KV blocks.
    cache_salt: Annotated[str, Field(min_length=1)] | None = None

    @field_validator("logit_bias")
    @classmethod
    def _token_id_keys(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is not None:
            bad = [k for k in value if not k.isdigit()]
            if bad:
                raise ValueError(f"keys must be token ids (non-negative integers as strings), got {bad[0]!r}")
        return value

    @property
    def engine_service_tier(self) -> str:
        return "flex" if self.service_tier == "flex" else "default"

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling_params(
        self, max_tokens: int, logprobs: int | None, defaults: Mapping[str, float] | None = None
    ) -> SamplingParams:
        """Engine parameters for this request. ``defaults`` (the model's generation_config) fill
        the sampling fields the client left out; a field the client sent always wins."""

        def pick(name: str) -> Any:
            if defaults and name in defaults and name not in self.model_fields_set:
                return defaults[name]
            return getattr(self, name)

        return SamplingParams(
            n=self.n,
            temperature=pick("temperature"),
            top_p=pick("top_p"),
            top_k=pick("top_k"),
            min_p=pick("min_p"),
            seed=self.seed,
            repetition_penalty=pick("repetition_penalty"),
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            ignore_eos=self.ignore_eos,
            max_tokens=max_tokens,
            logprobs=logprobs,
            include_stop_str_in_output=self.include_stop_str_in_output,
            skip_special_tokens=self.skip_special_tokens,
            logit_bias={int(k): float(v) for k, v in self.logit_bias.items()} if self.logit_bias else None,
        )


class CompletionRequest(SamplingRequest):
    prompt: Any
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=128)
    suffix: str | None = None

    @field_validator("prompt", mode="plain")
    @classmethod
    def _one_prompt_shape(cls, value: Any) -> str | list[str] | list[int] | list[list[int]]:
        # One message for the four shapes OpenAI allows, rather than one error per union member.
        def token_ids(item: Any) -> bool:
            return isinstance(item, list) and bool(item) and all(_is_token_id(t) for t in item)

        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and (
            all(isinstance(p, str) for p in value) or token_ids(value) or all(token_ids(p) for p in value)
        ):
            return value
        raise ValueError(
            "prompt must be a string, a non-empty list of strings, a non-empty list of token ids "
            "(integers >= 0), or a non-empty list of such lists"
        )

    def prompts(self) -> list[str | list[int]]:
        """The request's prompts: one text or token list, or a batch of them."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if isinstance(self.prompt[0], int):
            return [list(self.prompt)]
        return list(self.prompt)


def _is_token_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class TextPart(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    type: Literal["text"]
    text: str


class CalledFunction(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    name: str
    arguments: str


class MessageToolCall(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = Field(None, validate_default=True)
    name: str | None = None
    # an assistant's earlier tool calls, and the id a tool result answers (OpenAI's shapes)
    tool_calls: list[MessageToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content")
    @classmethod
    def _content_required(cls, value: Any, info: ValidationInfo) -> Any:
        # OpenAI's schema: only an assistant message may leave out its content (tool calls).
        role = info.data.get("role")
        if value is None and role is not None and role != "assistant":
            raise ValueError(f"a {role} message needs its content")
        return value

    def template_dict(self) -> dict[str, Any]:
        """The message as chat templates expect it: ``content`` a plain string."""
        parts = self.content if isinstance(self.content, list) else []
        content = "".join(part.text for part in parts) if parts else str(self.content or "")
        message: dict[str, Any] = {"role": self.role, "content": content}
        if self.name is not None:
            message["name"] = self.name
        if self.tool_calls:
            # templates read arguments as a mapping (transformers' convention); OpenAI sends JSON text
            message["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.function.name, "arguments": _json_or_text(c.function.arguments)}}
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            message["tool_call_id"] = self.tool_call_id
        return message


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


class ChatCompletionRequest(SamplingRequest):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    # Tool calling and structured output (server/tools.py checks them and names the bad field).
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool = True
    response_format: Any = None
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    add_generation_prompt: bool = True

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
