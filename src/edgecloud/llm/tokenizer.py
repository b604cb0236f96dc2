"""Tokenizer of a model directory: ``tokenizer.json`` through HF ``tokenizers``, plus the chat
template and special tokens from ``tokenizer_config.json``, rendered in a sandboxed Jinja2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer as HFTokenizer

from edgecloud.llm.errors import InvalidRequestError, ModelLoadError

# Used when a model ships no chat template: plain role-tagged turns.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


class Tokenizer:
    def __init__(self, model_dir: Path) -> None:
        path = model_dir / "tokenizer.json"
        try:
            self.hf = HFTokenizer.from_file(str(path))
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: missing (the engine needs tokenizer.json)") from None
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise ModelLoadError(f"{path}: cannot be parsed ({exc})") from None
        config_path = model_dir / "tokenizer_config.json"
        config: dict[str, Any] = {}
        if config_path.exists():
            try:
                config = json.loads(config_path.read_text())
            except json.JSONDecodeError as exc:
                raise ModelLoadError(f"{config_path}: not valid JSON ({exc})") from None
        template = config.get("chat_template")
        if isinstance(template, list):  # some checkpoints ship named templates
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.chat_template: str = template or DEFAULT_CHAT_TEMPLATE
        self.has_chat_template = template is not None
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token = _token_text(config.get("eos_token"))
        self.add_bos_token = bool(config.get("add_bos_token", False))
        self.bos_token_id = self.hf.token_to_id(self.bos_token) if self.bos_token else None
        self.eos_token_id = self.hf.token_to_id(self.eos_token) if self.eos_token else None
        self.vocab_size = self.hf.get_vocab_size(with_added_tokens=True)
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        try:
            self._template = env.from_string(self.chat_template)
        except TemplateError as exc:
            raise ModelLoadError(f"{config_path}: chat_template does not compile ({exc})") from None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=add_special_tokens).ids
        wants_bos = add_special_tokens and self.add_bos_token and self.bos_token_id is not None
        if wants_bos and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
            )
        except TemplateError as exc:
            raise InvalidRequestError(f"chat template failed on these messages: {exc}", "messages") from None


def _raise_template_error(message: str) -> None:
    raise TemplateError(message)
