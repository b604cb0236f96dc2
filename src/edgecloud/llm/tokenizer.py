"""Tokenizer of a model directory: ``tokenizer.json`` through HF ``tokenizers``, special tokens from
``tokenizer_config.json``, and the chat template, found and rendered the way transformers does.

Templates are looked for where transformers looks: ``chat_template.jinja`` beside the tokenizer
(what transformers writes since 4.43) and ``additional_chat_templates/*.jinja`` first, then the
``chat_template`` field of ``tokenizer_config.json`` (a string, or a list of named templates). A GGUF
checkpoint's ``tokenizer.chat_template`` arrives as ``chat_template.jinja`` in the directory
``edgecloud.llm.gguf`` converts it to. A model with none has ``has_chat_template == False`` and
rendering a chat is a request error: no template is made up, because a made-up one silently
degrades every answer. ``Tokenizer(model_dir, chat_template=...)`` supplies one (a file, or the
template text itself, as vLLM's ``--chat-template``).

Rendering matches transformers' ``apply_chat_template(..., tokenize=False)`` byte for byte: the same
sandboxed Jinja2 environment (``trim_blocks``, ``lstrip_blocks``, ``loopcontrols``, the
``{% generation %}`` tag), its ``tojson`` (no HTML escaping, ``indent``/``separators``/``sort_keys``),
``raise_exception``, ``strftime_now``, restricted ``dict`` and ``namespace``, the special tokens as
variables, ``tools``/``documents``/extra keyword arguments passed through, keys whose value is
``None`` dropped from messages, and reasoning aliased under ``reasoning_content`` and ``thinking``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import jinja2
import jinja2.ext
import jinja2.nodes
import numpy as np
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from edgecloud.llm.errors import InvalidRequestError, ModelLoadError

CHAT_TEMPLATE_FILE = "chat_template.jinja"
EXTRA_CHAT_TEMPLATES_DIR = "additional_chat_templates"
# The named special tokens transformers hands every template (its SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
# Names a message's reasoning arrives under; templates read the first (or `thinking`).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")

NO_TEMPLATE_MESSAGE = (
    "this model has no chat template (none in chat_template.jinja, tokenizer_config.json or the GGUF "
    "metadata); start the server with --chat-template FILE, or send raw prompts to /v1/completions"
)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def find_chat_templates(model_dir: Path, tokenizer_config: dict[str, Any]) -> tuple[dict[str, str], str | None]:
    """The model's chat templates by name (``default``, ``tool_use``, ...) and where they came from."""
    templates: dict[str, str] = {}
    file = model_dir / CHAT_TEMPLATE_FILE
    if file.is_file():
        templates["default"] = file.read_text(encoding="utf-8")
    extra_dir = model_dir / EXTRA_CHAT_TEMPLATES_DIR
    if extra_dir.is_dir():
        for path in sorted(extra_dir.glob("*.jinja")):
            templates[path.name.removesuffix(".jinja")] = path.read_text(encoding="utf-8")
    if templates:  # template files win over tokenizer_config.json, as in transformers
        return templates, str(file if "default" in templates else extra_dir)
    source = str(model_dir / "tokenizer_config.json")
    field = tokenizer_config.get("chat_template")
    if field is None:
        return {}, None
    if isinstance(field, str):
        return {"default": field}, source
    if isinstance(field, list) and all(
        isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str) for t in field
    ):
        return {t["name"]: t["template"] for t in field}, source
    raise ModelLoadError(
        f"{source}: chat_template must be a string or a list of {{name, template}} objects, got {field!r:.80}"
    )


def _template_argument(value: str | Path) -> tuple[str, str]:
    """The template and its source, by vLLM's ``--chat-template`` rule: a path to a file, or the
    template text itself when it contains braces or newlines."""
    if isinstance(value, str) and any(c in value for c in "{}\n"):
        return value, "--chat-template"
    path = Path(value).expanduser()
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except OSError as exc:
        raise ModelLoadError(f"chat template file {str(path)!r} cannot be read ({exc.strerror})") from None


class Tokenizer:
    def __init__(self, model_dir: Path, chat_template: str | Path | None = None) -> None:
        path = model_dir / "tokenizer.json"
        try:
            self.hf = HFTokenizer.from_file(str(path))
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: missing (the engine needs tokenizer.json)") from None
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise ModelLoadError(f"{path}: cannot be parsed ({exc})") from None
        config = _read_json(model_dir / "tokenizer_config.json")
        legacy_map = _read_json(model_dir / "special_tokens_map.json")
        self.special_tokens: dict[str, str] = {}
        for name in SPECIAL_TOKEN_NAMES:
            text = _token_text(config.get(name, legacy_map.get(name)))
            if isinstance(text, str):
                self.special_tokens[name] = text
        self.bos_token = self.special_tokens.get("bos_token")
        self.eos_token = self.special_tokens.get("eos_token")
        self.add_bos_token = bool(config.get("add_bos_token", False))
        self.bos_token_id = self.hf.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_token_id = self.hf.token_to_id(self.eos_token) if self.eos_token else None
        self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)

        self.chat_templates, self.chat_template_source = find_chat_templates(model_dir, config)
        if chat_template is not None:
            if isinstance(chat_template, str) and chat_template in self.chat_templates:
                self.chat_templates = {"default": self.chat_templates[chat_template]}
            else:
                text, self.chat_template_source = _template_argument(chat_template)
                self.chat_templates = {"default": text}
        self.has_chat_template = bool(self.chat_templates)
        self.chat_template: str | None = self.chat_templates.get("default")
        self._compiled: dict[str, jinja2.Template] = {}
        for name, text in self.chat_templates.items():
            try:
                self._compiled[name] = _ENVIRONMENT.from_string(text)
            except TemplateError as exc:
                where = self.chat_template_source or "chat template"
                raise ModelLoadError(f"{where}: chat template {name!r} does not compile ({exc})") from None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=add_special_tokens).ids
        wants_bos = add_special_tokens and self.add_bos_token and self.bos_token_id is not None
        if wants_bos and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def _select_template(self, tools: list[Any] | None) -> jinja2.Template:
        if not self._compiled:
            raise InvalidRequestError(NO_TEMPLATE_MESSAGE, "messages")
        if tools is not None and "tool_use" in self._compiled:
            return self._compiled["tool_use"]
        if "default" in self._compiled:
            return self._compiled["default"]
        raise InvalidRequestError(
            f"this model has several chat templates and none is named default: {sorted(self._compiled)}", "messages"
        )

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        *,
        tools: list[dict[str, Any]] | None = None,
        documents: list[dict[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> str:
        """The rendered prompt, as transformers' ``apply_chat_template(..., tokenize=False)``;
        ``template_kwargs`` (``enable_thinking``, ``date_string``, ...) reach the template and
        override the special tokens of the same name."""
        template = self._select_template(tools)
        if not messages:
            raise InvalidRequestError("messages must contain at least one message", "messages")
        chat = [_plain(m) for m in messages]
        if not all(isinstance(m, dict) for m in chat):
            raise InvalidRequestError("every message must be an object with a role", "messages")
        chat = [_alias_reasoning({k: v for k, v in m.items() if v is not None}) for m in chat]
        if documents is not None and not all(isinstance(d, dict) for d in documents):
            raise InvalidRequestError("documents must be objects with title and text", "documents")
        variables = {**self.special_tokens, **_plain(template_kwargs)}
        try:
            return template.render(
                messages=chat,
                tools=_plain(tools),
                documents=_plain(documents),
                add_generation_prompt=add_generation_prompt,
                **variables,
            )
        except (TemplateError, TypeError, ValueError, LookupError, ArithmeticError) as exc:
            raise InvalidRequestError(f"chat template failed on these messages: {exc}", "messages") from None


def _plain(value: Any) -> Any:
    """What a template may see: JSON-like data only (a sandbox cannot vouch for other objects'
    methods); dataclasses and pydantic models become dicts, anything else a ``<TypeName>`` string."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, np.generic):  # np.bool_(False) must not become a truthy placeholder
        return _plain(value.item())
    if isinstance(value, str):  # enum and other subclasses: back to the base type
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _alias_reasoning(message: dict[str, Any]) -> dict[str, Any]:
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return message
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` marks assistant text for training masks; when
    rendering a prompt it only passes its body through (templates using it must still compile)."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: jinja2.runtime.Macro) -> str:
        return caller()


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters and sorts keys; templates expect plain json.dumps.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateDict:
    """``dict(...)`` inside templates, without exposing the ``dict`` type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """Jinja's ``namespace`` refusing underscore names, so a template cannot reach interpreter
    internals through attributes it stores."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"chat templates cannot store underscore names on a namespace: {name!r}")


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    return env


_ENVIRONMENT = _environment()
