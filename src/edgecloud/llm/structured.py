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
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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


@dataclass
class Closing:
    """A way to complete the document from a matcher's state: the bytes and the tokens they take.
    ``searched``: the breadth-first search has been run for this path (from this state, or from
    one before it that these bytes also closed) and found none shorter; ``shortest``: that search
    was exhaustive from this path's own line, so none exists. Otherwise a valid completion that
    may be longer."""

    text: bytes
    tokens: list[int]
    searched: bool = False
    shortest: bool = False


class GrammarState:
    """One request's matcher and a completion it can always fall back on (``closing``). The
    budget rule (``StructuredOutputs.bitmask`` / ``accept``): after every token the closing path
    fits in the tokens the request has left, so an answer cut by ``max_tokens`` still ends as a
    complete document of its grammar."""

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher
        self.closing: Closing | None = None
        self.budgeted = True  # False when no completion could be found (then no guarantee)
        self.paths: dict[str, Closing] = {}  # closing paths made before, by the parser state they start from

    def is_terminated(self) -> bool:
        return bool(self.matcher.is_terminated())


# The closer's byte order: end a string, an array or an object, move past a value, then the
# shortest values (``0``, ``""``, ``[]``, ``{}``, ``true``, ``null``, ``false``).
_CLOSING_PRIORITY = b'"]}:,0[{tnf-.eE'
_POSITION = re.compile(r"rule_start_pos=(-?\d+)")


class StructuredOutputs:
    """The engine core's grammar backend: one per engine, built lazily on the first structured
    request (reading the tokenizer's vocabulary costs about a second).

    **Budget-aware completion** (docs/netgpt.md, section 4). A strict schema must hold even when
    ``max_tokens`` ends the answer (a small model can loop inside a string or an array until the
    budget runs out). Each request carries a *closing path*: bytes the grammar accepts from the
    matcher's state to the end of the document, walked on the matcher itself (so always valid),
    and the tokens they take. The path is the closer's (at each byte the first allowed one in
    ``_CLOSING_PRIORITY``, ~2 ms) and, whenever it does not fit in the tokens left, the shortest
    one a breadth-first search over the matcher's transitions finds. When the tokens left equal
    the path's, the next token is the path's; a sampled token after which no closing path fits
    in what is left is replaced by the path's first token. So the document is complete at
    ``max_tokens`` at the latest (``finish_reason`` ``length``; values may be cut short, the
    document validates), and a request whose budget cannot hold the shortest document at all is
    refused (``InvalidRequestError`` on ``max_tokens``, a 400 in the server)."""

    # one-byte transitions one breadth-first closing search may try (~12 us each on this CPU, so
    # ~40 ms at most): the search is an improvement on the closer's path, never needed for validity
    search_limit = 3000

    def __init__(self, tokenizer_file: Path, vocab_size: int, eos_token_ids: list[int]) -> None:
        self.tokenizer_file = tokenizer_file
        self.vocab_size = vocab_size
        self.eos_token_ids = sorted(eos_token_ids)
        self._compiler: Any = None
        self._token_bytes: list[bytes] = []
        self._byte_token: dict[int, int] = {}
        self._byte_table = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        self._piece_token: dict[bytes, int] = {}
        self._longest_piece = 1
        # how often the budget rule did its costly work (the closer walk, its vocabulary-wide
        # fallback, the search) and reused a path for a parser state it had seen (tests, bench)
        self.stats: Counter[str] = Counter()

    def compiler(self) -> Any:
        if self._compiler is None:
            import transformers

            xgr = _xgrammar()
            hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(self.tokenizer_file))
            info = xgr.TokenizerInfo.from_huggingface(hf, vocab_size=self.vocab_size,
                                                      stop_token_ids=self.eos_token_ids)
            special = set(info.special_token_ids) | set(self.eos_token_ids)
            self._token_bytes = [bytes(piece) for piece in info.decoded_vocab]
            for token, piece in enumerate(self._token_bytes):
                if token in special or not piece:
                    continue
                self._piece_token.setdefault(piece, token)
                if len(piece) == 1:
                    self._byte_token.setdefault(piece[0], token)
            self._longest_piece = max(len(piece) for piece in self._piece_token)
            ordered = sorted(self._byte_token.items())
            tokens = np.array([t for _, t in ordered], dtype=np.int64)
            self._byte_table = (np.array([b for b, _ in ordered], dtype=np.int64), tokens // 32, tokens % 32)
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

    def start(self, spec: StructuredOutputsParams, max_tokens: int | None = None) -> GrammarState:
        """A request's grammar state. With ``max_tokens``, raises ``InvalidRequestError`` on
        ``max_tokens`` when the shortest document the grammar allows does not fit in it."""
        state = GrammarState(self.new_matcher(spec))
        if max_tokens is not None and self.closing(state) is not None:
            closing = self._fitted(state, max_tokens)
            if len(closing.tokens) > max_tokens:
                kind = next(name for name in _KINDS if getattr(spec, name))
                shortest = "the shortest output it allows" if closing.shortest else "the shortest output found"
                raise InvalidRequestError(
                    f"max_tokens={max_tokens} cannot hold a complete {kind} output: {shortest}, "
                    f"{closing.text.decode(errors='replace')!r}, takes {len(closing.tokens)} tokens",
                    "max_tokens",
                )
        return state

    # -- the per-step interface (model_runner) ------------------------------------------------

    def bitmask(self, states: list[GrammarState], budgets: list[int] | None = None) -> torch.Tensor:
        """Each request's allowed next tokens, one int32 bitmask row each. ``budgets[i]``: the
        tokens request ``i`` may still write, this one included; when its closing path takes all
        of them, the path's next token is the only one allowed."""
        mask = _xgrammar().allocate_token_bitmask(len(states), self.vocab_size)
        for row, state in enumerate(states):
            if budgets is not None and not state.is_terminated() and self.closing(state) is not None:
                closing = self._fitted(state, budgets[row] - 1)
                if closing.tokens and len(closing.tokens) >= budgets[row]:
                    mask[row] = single_token_bitmask(closing.tokens[0], self.vocab_size)
                    continue
            state.matcher.fill_next_token_bitmask(mask, row)
        return mask

    def accept(self, state: GrammarState, token: int, budget: int | None = None) -> int | None:
        """Advances ``state`` by the sampled ``token`` (a token the mask allowed is always
        accepted; after EOS the matcher stays terminated). With ``budget`` (the tokens the request
        could write before this one, this one included): returns ``None`` when a closing path
        still fits in ``budget - 1`` after ``token``; otherwise ``token`` is not taken, the closing
        path's first token is, and that token is returned (the caller emits it instead)."""
        matcher = state.matcher
        if matcher.is_terminated():
            return None
        before = None if budget is None else self.closing(state)
        if not matcher.accept_token(token):
            raise RuntimeError(f"the grammar refused token {token}, which its mask allowed")
        if before is None or budget is None or matcher.is_terminated():
            return None
        after = self._carried(state, before, token)
        if after is not None:
            state.closing = after
            if len(self._fitted(state, budget - 1).tokens) <= budget - 1:
                return None
        # no complete document fits after this token: take the closing path's first token instead,
        # or end the answer where the document is already complete (e.g. before another tool call)
        matcher.rollback(1)
        forced = before.tokens[0] if before.tokens else self.eos_token_ids[0]
        if not matcher.accept_token(forced):
            raise RuntimeError(f"the grammar refused its own closing token {forced}")
        if before.tokens:
            piece = self._token_bytes[forced]
            state.closing = Closing(before.text[len(piece):], before.tokens[1:], before.searched, before.shortest)
        else:
            state.closing = before
        return forced

    # -- closing paths ------------------------------------------------------------------------

    def closing(self, state: GrammarState) -> Closing | None:
        """The state's closing path (made on first use, then kept up to date by ``accept``);
        ``None`` for a grammar no completion was found for (decoded without the guarantee)."""
        if state.closing is None and state.budgeted:
            state.closing = self._path(state.matcher)
            state.budgeted = state.closing is not None
        return state.closing

    def _path(self, matcher: Any) -> Closing | None:
        """The closer's path from the matcher's state, else the search's, else ``None``."""
        text = self._closer(matcher)
        if text is not None:
            return Closing(text, self.tokenize(text))
        found = self._shortest(matcher)
        return None if found is None else Closing(found[0], self.tokenize(found[0]), True, found[1])

    def _fitted(self, state: GrammarState, tokens_left: int) -> Closing:
        """The state's closing path; when it takes more than ``tokens_left`` tokens and no search
        has been made from this state, the breadth-first search's if that one is shorter."""
        closing = state.closing
        assert closing is not None
        if len(closing.tokens) > tokens_left and not closing.searched:
            found = self._shortest(state.matcher)
            if found is None:
                closing = Closing(closing.text, closing.tokens, searched=True)
            else:
                text, exhaustive = found
                tokens = self.tokenize(text)
                if len(tokens) < len(closing.tokens):
                    closing = Closing(text, tokens, searched=True, shortest=exhaustive)
                else:
                    closing = Closing(closing.text, closing.tokens, searched=True,
                                      shortest=exhaustive and len(text) == len(closing.text))
            state.closing = closing
        return closing

    def _carried(self, state: GrammarState, before: Closing, token: int) -> Closing | None:
        """A closing path for the state after ``token``, cheapest first: the rest of the one before
        when ``token`` begins it (a shortest path's rest is a shortest path), the same bytes when
        the grammar still accepts them (e.g. after more characters inside a string), the path made
        before for the same parser state when it still completes (the same state has the same
        futures; checked, not trusted), else the closer's."""
        piece = self._token_bytes[token]
        if before.tokens and token == before.tokens[0]:
            return Closing(before.text[len(piece):], before.tokens[1:], before.searched, before.shortest)
        if piece and before.text.startswith(piece):
            rest = before.text[len(piece):]
            return Closing(rest, self.tokenize(rest), before.searched, before.shortest)
        if self._completes(state.matcher, before.text):  # searched once is enough for these bytes
            return Closing(before.text, before.tokens, before.searched)
        key = _parser_state(state.matcher)
        seen = state.paths.get(key)
        if seen is not None and self._completes(state.matcher, seen.text):
            self.stats["reused"] += 1
            return seen
        path = self._path(state.matcher)
        if path is not None:
            state.paths[key] = path
        return path

    def _completes(self, matcher: Any, text: bytes) -> bool:
        """Whether ``text`` takes the matcher from its state to a complete document (the matcher
        is left where it was)."""
        accepted = 0
        try:
            for byte in text:
                token = self._byte_token.get(byte)
                if token is None or not matcher.accept_token(token):
                    return False
                accepted += 1
            return bool(matcher.is_completed())
        finally:
            if accepted:
                matcher.rollback(accepted)

    def _allowed_bytes(self, matcher: Any, mask: torch.Tensor) -> list[int]:
        """The bytes whose one-byte tokens the matcher allows next, ascending."""
        matcher.fill_next_token_bitmask(mask, 0)
        bytes_, words, bits = self._byte_table
        allowed = (mask[0].numpy()[words] >> bits) & 1
        return bytes_[allowed.astype(bool)].tolist()

    def _closer(self, matcher: Any, max_bytes: int = 8192) -> bytes | None:
        """The closer's path: at each byte the first allowed one in ``_CLOSING_PRIORITY`` (then the
        others, ascending) that does not leave the parser where it was (another digit, another
        character of a string), walked on the matcher until the grammar is complete; ``None``
        past ``max_bytes``. The priority bytes are tried on the matcher first (a refused byte costs
        ~0.5 us); only when none moves the parser (e.g. inside a property name) are all allowed
        bytes read from the vocabulary-wide mask."""
        self.stats["closer"] += 1
        mask = None
        path = bytearray()
        here = _parser_state(matcher)
        try:
            while not matcher.is_completed():
                if len(path) >= max_bytes:
                    return None
                there = None
                for byte in _CLOSING_PRIORITY:
                    token = self._byte_token.get(byte)
                    if token is not None and matcher.accept_token(token):
                        there = _parser_state(matcher)
                        if there != here:
                            break
                        matcher.rollback(1)
                        there = None
                if there is None:  # every priority byte is refused or loops: the full order
                    self.stats["closer_masks"] += 1
                    if mask is None:
                        mask = _xgrammar().allocate_token_bitmask(1, self.vocab_size)
                    allowed = self._allowed_bytes(matcher, mask)
                    if not allowed:
                        return None
                    order = [b for b in _CLOSING_PRIORITY if b in allowed]
                    order += [b for b in allowed if b not in _CLOSING_PRIORITY]
                    for byte in order:
                        matcher.accept_token(self._byte_token[byte])
                        there = _parser_state(matcher)
                        if there != here or byte == order[-1]:
                            break
                        matcher.rollback(1)
                    path.append(byte)
                else:
                    path.append(byte)
                here = there
            return bytes(path)
        finally:
            if path:
                matcher.rollback(len(path))

    def _shortest(self, matcher: Any) -> tuple[bytes, bool] | None:
        """Breadth-first over one-byte tokens from the matcher's state: the first path that
        completes the grammar, and whether the search was exhaustive. ASCII bytes only where the
        grammar allows any; of the bytes that leave the parser in the same state (xgrammar's
        parser state after the byte, e.g. every ordinary character inside a string) one is kept,
        and none that leaves it where the byte before did (a loop). ``None`` past
        ``search_limit`` one-byte transitions tried."""
        self.stats["searches"] += 1
        mask = _xgrammar().allocate_token_bitmask(1, self.vocab_size)
        frontier, tried, pruned = [(b"", _parser_state(matcher))], 0, False
        while frontier:
            level: list[tuple[bytes, str]] = []
            for path, parent in frontier:
                for byte in path:
                    matcher.accept_token(self._byte_token[byte])
                try:
                    if matcher.is_completed():
                        return path, not pruned
                    allowed = self._allowed_bytes(matcher, mask)
                    ascii_ = [byte for byte in allowed if byte < 0x80]
                    pruned = pruned or len(ascii_) not in (0, len(allowed))
                    tried += len(ascii_ or allowed)
                    if tried > self.search_limit:
                        return None
                    seen = {parent}
                    for byte in ascii_ or allowed:
                        matcher.accept_token(self._byte_token[byte])
                        key = _parser_state(matcher)
                        matcher.rollback(1)
                        if key not in seen:
                            seen.add(key)
                            level.append((path + bytes([byte]), key))
                finally:
                    if path:
                        matcher.rollback(len(path))
            frontier = level
        return None

    def tokenize(self, text: bytes) -> list[int]:
        """``text`` as vocabulary tokens, longest piece first (byte for byte, so the grammar accepts
        the tokens exactly when it accepts the bytes)."""
        self.compiler()  # reads the vocabulary on first use
        tokens, start = [], 0
        while start < len(text):
            for end in range(min(len(text), start + self._longest_piece), start, -1):
                token = self._piece_token.get(text[start:end])
                if token is not None:
                    tokens.append(token)
                    start = end
                    break
            else:
                raise RuntimeError(f"byte {text[start]:#x} has no token in this vocabulary")
        return tokens


def _parser_state(matcher: Any) -> str:
    """The matcher's parser state after its last byte as xgrammar prints it (the last Earley
    step; the version is pinned), with the current position written as ``cur``: equal for two
    bytes from one state that lead to the same futures, and for a byte that loops back to where
    the byte before it left the parser (e.g. inside a string)."""
    printed = matcher._debug_print_internal_state()
    head, _, items = printed.partition("Last step:")
    words = head.split()
    current = int(words[2]) - 1 if len(words) > 2 and words[2].isdigit() else None
    return _POSITION.sub(lambda m: "cur" if current is not None and int(m.group(1)) == current else m.group(1),
                         items or printed)


def single_token_bitmask(token: int, vocab_size: int) -> torch.Tensor:
    """An int32 bitmask row that allows only ``token``."""
    row = torch.zeros((vocab_size + 31) // 32, dtype=torch.int32)
    row[token // 32] = torch.tensor(1 << (token % 32), dtype=torch.int64).to(torch.int32)
    return row


def json_schema_text(schema: dict[str, Any]) -> str:
    """A schema as the compact JSON text ``StructuredOutputsParams.json_schema`` carries."""
    return json.dumps(schema, separators=(",", ":"), sort_keys=True)
