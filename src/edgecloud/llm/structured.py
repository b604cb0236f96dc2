"""Grammar-constrained decoding (structured outputs): a JSON Schema, any JSON object, an EBNF
grammar or a structural tag (tagged JSON, e.g. tool calls) that every generated token must keep
satisfiable, as vLLM's and SGLang's structured outputs do.

``StructuredOutputsParams`` is the request's spec, a plain dataclass inside ``SamplingParams`` (so
it crosses the engine core's process boundary with the request). In the core, a
``StructuredOutputs`` backend compiles the spec (the library caches compiled grammars), gives each
request its own matcher, fills the per-row allowed-token bitmask before sampling, and advances the
matcher with every accepted token. When the grammar is complete only end-of-sequence is allowed,
so the answer ends exactly where the grammar does.

The library is xgrammar (MLC's pushdown automaton with a per-grammar token-mask cache; the default
of vLLM and SGLang), chosen by measured overhead on this CPU against llguidance and outlines-core
(``scripts/netgpt_grammar_libs.py``, docs/netgpt.md): per token 13 us median against 31 us
(llguidance) and 10 us with a 760 us p90 (outlines-core); with the compile of a fresh BFCL schema
spread over its answer, 0.22 ms a token against 0.39 ms, and outlines-core takes 257 ms to compile
one schema. It is installed with ``--no-deps`` (Makefile): its Linux wheel metadata asks for
triton, which only its GPU kernels use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgecloud.llm.errors import InvalidRequestError

_KINDS = ("json_schema", "json_object", "grammar", "structural_tag")


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as error:
        raise RuntimeError("structured outputs need xgrammar: pip install --no-deps 'xgrammar==0.2.8' "
                           "'apache-tvm-ffi==0.1.15.post2' (the Makefile does)") from error
    return xgrammar


@dataclass
class StructuredOutputsParams:
    """What a request's output must match: exactly one of ``json_schema`` (the schema as JSON
    text), ``json_object`` (any JSON object), ``grammar`` (EBNF, xgrammar's dialect, rule ``root``)
    or ``structural_tag`` (xgrammar's structural tag as JSON text: tagged regions such as
    ``<tool_call>...</tool_call>`` whose content follows a schema)."""

    json_schema: str | None = None
    json_object: bool = False
    grammar: str | None = None
    structural_tag: str | None = None

    def __post_init__(self) -> None:
        given = [name for name in _KINDS if getattr(self, name)]
        if len(given) != 1:
            raise InvalidRequestError(
                f"structured_outputs needs exactly one of {', '.join(_KINDS)} (got {given or 'none'})",
                "structured_outputs",
            )

    def check(self) -> None:
        """Raises ``InvalidRequestError`` naming what the grammar library could not build (no
        tokenizer needed: the front end checks before a request reaches the core)."""
        xgr = _xgrammar()
        try:
            if self.json_schema is not None:
                xgr.Grammar.from_json_schema(_compilable(self.json_schema), any_whitespace=False, strict_mode=True)
            elif self.grammar is not None:
                xgr.Grammar.from_ebnf(self.grammar)
            elif self.structural_tag is not None:
                xgr.Grammar.from_structural_tag(self.structural_tag)
        except Exception as error:
            kind = next(name for name in _KINDS if getattr(self, name))
            raise InvalidRequestError(f"structured output {kind} is invalid: {error}", "structured_outputs") from error


def declare_required(schema: Any) -> Any:
    """The schema with every name an object ``required``s but does not list in ``properties``
    added there as ``{}`` (any value): equivalent in JSON Schema, and what xgrammar needs to
    enforce it (it drops ``required`` names it has no property for, so a BFCL parameter such as
    ``{"type": "object", "required": ["adults"]}`` let ``{}`` through: docs/netgpt.md, section 4)."""
    if isinstance(schema, list):
        return [declare_required(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: declare_required(value) for key, value in schema.items()}
    required = out.get("required")
    if isinstance(required, list):
        properties = out.get("properties") if isinstance(out.get("properties"), dict) else {}
        missing = [name for name in required if isinstance(name, str) and name not in properties]
        if missing:
            out["properties"] = {**properties, **{name: {} for name in missing}}
    return out


def _compilable(json_schema: str) -> str:
    try:
        return json.dumps(declare_required(json.loads(json_schema)))
    except json.JSONDecodeError:
        return json_schema  # the library names the syntax error


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[rows, ceil(V/32)]`` int32 bitmasks (bit ``t % 32`` of word ``t // 32`` allows token ``t``) as
    ``[rows, vocab_size]`` booleans."""
    bits = torch.arange(32, dtype=torch.int32)
    allowed = (bitmask.unsqueeze(-1) >> bits) & 1
    return allowed.reshape(bitmask.shape[0], -1)[:, :vocab_size].bool()


class StructuredOutputs:
    """The engine core's grammar backend: one per engine, built lazily on the first structured
    request (reading the tokenizer's vocabulary costs about a second)."""

    def __init__(self, tokenizer_file: Path, vocab_size: int, eos_token_ids: list[int]) -> None:
        self.tokenizer_file = tokenizer_file
        self.vocab_size = vocab_size
        self.eos_token_ids = sorted(eos_token_ids)
        self._compiler: Any = None

    def compiler(self) -> Any:
        if self._compiler is None:
            import transformers

            xgr = _xgrammar()
            hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(self.tokenizer_file))
            info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=self.vocab_size,
                                                      stop_token_ids=self.eos_token_ids)
            # one thread: the core shares its CPU with the model's forward pass
            self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_limit_bytes=64 * 2**20)
        return self._compiler

    def new_matcher(self, spec: StructuredOutputsParams) -> Any:
        """A fresh matcher for one request (compiled grammars come from the compiler's cache)."""
        xgr = _xgrammar()
        compiler = self.compiler()
        try:
            if spec.json_schema is not None:
                compiled = compiler.compile_json_schema(_compilable(spec.json_schema), any_whitespace=False,
                                                        strict_mode=True)
            elif spec.json_object:
                compiled = compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            elif spec.grammar is not None:
                compiled = compiler.compile_grammar(spec.grammar)
            else:
                compiled = compiler.compile_structural_tag(spec.structural_tag)
        except Exception as error:
            raise InvalidRequestError(f"structured output grammar is invalid: {error}", "structured_outputs") from error
        return xgr.GrammarMatcher(compiled)

    def bitmask(self, matchers: list[Any]) -> torch.Tensor:
        """Each matcher's allowed next tokens, one int32 bitmask row each."""
        mask = _xgrammar().allocate_token_bitmask(len(matchers), self.vocab_size)
        for row, matcher in enumerate(matchers):
            matcher.fill_next_token_bitmask(mask, row)
        return mask

    @staticmethod
    def accept(matcher: Any, token: int) -> None:
        """Advances a matcher by the sampled token (a matcher that reached its end, EOS sampled,
        stays terminated; a token the mask allowed is always accepted)."""
        if not matcher.is_terminated():
            matcher.accept_token(token)


def json_schema_text(schema: dict[str, Any]) -> str:
    """A schema as the compact JSON text ``StructuredOutputsParams.json_schema`` carries."""
    return json.dumps(schema, separators=(",", ":"), sort_keys=True)
