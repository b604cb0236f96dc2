"""Per-request sampling options, validated on construction (vLLM's SamplingParams shape).

A plain dataclass that msgspec encodes as it is: it crosses the engine core's process boundary
inside ``EngineCoreRequest``.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.structured import StructuredOutputsParams


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    max_tokens: int = 16
    logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # OpenAI's logit_bias: token id -> bias in [-100, 100], added to the logits before sampling.
    logit_bias: dict[int, float] | None = None
    # Grammar-constrained decoding: a JSON Schema, any JSON object, or a Lark grammar (llm/structured.py).
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        def bad(param: str, allowed: str, value: object) -> InvalidRequestError:
            return InvalidRequestError(f"{param} must be {allowed}, got {value!r}", param=param)

        if not isinstance(self.n, int) or not 1 <= self.n <= 128:
            raise bad("n", "an integer in [1, 128]", self.n)
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise bad("max_tokens", "a positive integer", self.max_tokens)
        if not 0.0 <= self.temperature <= 100.0:
            raise bad("temperature", "in [0, 100]", self.temperature)
        if not 0.0 < self.top_p <= 1.0:
            raise bad("top_p", "in (0, 1]", self.top_p)
        if not isinstance(self.top_k, int) or self.top_k < -1:
            raise bad("top_k", "an integer >= 0 (0 or -1 disables it)", self.top_k)
        if not 0.0 <= self.min_p <= 1.0:
            raise bad("min_p", "in [0, 1]", self.min_p)
        if not 0.0 < self.repetition_penalty <= 10.0:
            raise bad("repetition_penalty", "in (0, 10]", self.repetition_penalty)
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise bad(name, "in [-2, 2]", getattr(self, name))
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or not 0 <= self.logprobs <= 20):
            raise bad("logprobs", "an integer in [0, 20]", self.logprobs)
        if self.seed is not None and not isinstance(self.seed, int):
            raise bad("seed", "an integer", self.seed)
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if any(not isinstance(s, str) or not s for s in stops):
            raise bad("stop", "non-empty strings", self.stop)
        if len(stops) > 16:
            raise bad("stop", "at most 16 strings", len(stops))
        if self.stop_token_ids is not None and any(
            not isinstance(t, int) or t < 0 for t in self.stop_token_ids
        ):
            raise bad("stop_token_ids", "non-negative integers", self.stop_token_ids)
        if self.logit_bias is not None:
            for token, bias in self.logit_bias.items():
                if not isinstance(token, int) or isinstance(token, bool) or token < 0:
                    raise bad("logit_bias", "a map from token ids (integers >= 0) to biases", token)
                if not isinstance(bias, int | float) or isinstance(bias, bool) or not -100 <= bias <= 100:
                    raise bad("logit_bias", "biases in [-100, 100]", bias)
            if len(self.logit_bias) > 1024:
                raise bad("logit_bias", "at most 1024 entries", len(self.logit_bias))
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise bad("structured_outputs", "a StructuredOutputsParams", self.structured_outputs)
        if self.top_k == -1:
            self.top_k = 0

    @property
    def stop_strings(self) -> tuple[str, ...]:
        """``stop`` as a tuple of strings (validated non-empty on construction)."""
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
