"""Chat templates are found where transformers finds them and render byte-identically to its
``apply_chat_template(..., tokenize=False)``: SmolLM2 (from its GGUF), Qwen2.5 and Llama-3.1/3.2
(official templates, tests/llm/data/chat_templates) and SmolLM3 (``{% generation %}``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from edgecloud.llm.errors import InvalidRequestError, ModelLoadError
from edgecloud.llm.random_model import write_tokenizer
from edgecloud.llm.tokenizer import Tokenizer

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_current_temperature",
    "description": "Get the temperature at a location. Use <b>celsius</b> & \"quotes\" when unsure.",
    "parameters": {"type": "object", "properties": {
        "location": {"type": "string", "description": "City, Country — e.g. Zürich, CH"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["location"]}}}

CHATS: dict[str, list[dict[str, Any]]] = {
    "one user turn": [{"role": "user", "content": "Name the planet we live on, in one word."}],
    "system and history": [
        {"role": "system", "content": "You are terse.  "},
        {"role": "user", "content": "Hi! {{ not a template }} {% raw %}"},
        {"role": "assistant", "content": "Hello — ça va? 日本語 🙂"},
        {"role": "user", "content": "  code:\n```py\nprint('x')\n```\n"},
    ],
    "none values dropped": [{"role": "user", "content": "hi", "name": None, "tool_calls": None}],
}
TOOL_CHAT = [
    {"role": "system", "content": "You answer weather questions."},
    {"role": "user", "content": "How warm is it in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{"type": "function", "function": {
        "name": "get_current_temperature", "arguments": {"location": "Paris, FR"}}}]},
    {"role": "tool", "content": "{\"temperature\": 22.5}"},
]


def model_dir(root: Path, template: str | None = None, **config: Any) -> Path:
    """A tokenizer directory; ``template`` goes to chat_template.jinja when given."""
    root.mkdir(parents=True, exist_ok=True)
    write_tokenizer(root, 300)
    fields = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|eos|>", **config}
    (root / "tokenizer_config.json").write_text(json.dumps(fields))
    if template is not None:
        (root / "chat_template.jinja").write_text(template, encoding="utf-8")
    return root


def official(name: str) -> str:
    return (TEMPLATES / name).read_text(encoding="utf-8")


def assert_same(path: Path, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    reference = AutoTokenizer.from_pretrained(path).apply_chat_template(messages, tokenize=False, **kwargs)
    ours = Tokenizer(path).apply_chat_template(messages, **kwargs)
    assert ours == reference
    return ours


@pytest.fixture(scope="module")
def smollm2_template() -> str:
    from gguf import GGUFReader

    from edgecloud.llm.gguf import default_model_path

    try:
        path = default_model_path()
    except ModelLoadError as exc:
        pytest.skip(str(exc))
    return GGUFReader(path).fields["tokenizer.chat_template"].contents()


@pytest.mark.parametrize("chat", list(CHATS), ids=list(CHATS))
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_smollm2_qwen_llama_render_as_transformers(
    tmp_path: Path, smollm2_template: str, chat: str, generation_prompt: bool
) -> None:
    cases = {
        "smollm2": (smollm2_template, {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}),
        "qwen2.5": (official("qwen2.5-instruct.jinja"), {"bos_token": None, "eos_token": "<|im_end|>"}),
        "llama-3.1": (official("llama-3.1-instruct.jinja"),
                      {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}),
    }
    for name, (template, tokens) in cases.items():
        text = assert_same(model_dir(tmp_path / name, template, **tokens), CHATS[chat],
                           add_generation_prompt=generation_prompt)
        assert "Name the planet" in text or "print('x')" in text or "hi" in text


def test_smollm2_prompt_is_the_published_format(tmp_path: Path, smollm2_template: str) -> None:
    text = Tokenizer(model_dir(tmp_path, smollm2_template)).apply_chat_template(CHATS["one user turn"])
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nName the planet we live on, in one word.<|im_end|>\n<|im_start|>assistant\n"
    )


def test_tools_render_as_transformers(tmp_path: Path) -> None:
    qwen = model_dir(tmp_path / "qwen", official("qwen2.5-instruct.jinja"), eos_token="<|im_end|>")
    text = assert_same(qwen, TOOL_CHAT, tools=[WEATHER_TOOL], add_generation_prompt=True)
    assert "<b>celsius</b> &" in text and "Zürich" in text  # tojson neither escapes HTML nor ASCII
    llama = model_dir(tmp_path / "llama", official("llama-3.1-instruct.jinja"), bos_token="<|begin_of_text|>")
    text = assert_same(llama, TOOL_CHAT, tools=[WEATHER_TOOL], add_generation_prompt=True)
    assert '    "type": "function",' in text  # tojson(indent=4)
    assert_same(llama, TOOL_CHAT[1:2], add_generation_prompt=False, tools=[WEATHER_TOOL], tools_in_user_message=False,
                date_string="01 Jan 2030")


def test_strftime_now_and_template_kwargs_reach_the_template(tmp_path: Path) -> None:
    llama32 = model_dir(tmp_path / "llama32", official("llama-3.2-instruct.jinja"), bos_token="<|begin_of_text|>")
    text = assert_same(llama32, CHATS["one user turn"], add_generation_prompt=True)
    assert "Today Date: " in text and "26 Jul 2024" not in text  # strftime_now is defined
    smollm3 = model_dir(tmp_path / "smollm3", official("smollm3.jinja"), eos_token="<|im_end|>")
    for thinking in (True, False):  # SmolLM3 wraps assistant turns in {% generation %}
        text = assert_same(smollm3, CHATS["system and history"], add_generation_prompt=True,
                           enable_thinking=thinking)
        assert ("<think>\n\n</think>" in text) is (not thinking)


def test_templates_are_found_where_transformers_finds_them(tmp_path: Path) -> None:
    chat = CHATS["one user turn"]
    in_field = model_dir(tmp_path / "field", chat_template="FIELD {{ messages[0].content }}")
    assert Tokenizer(in_field).apply_chat_template(chat) == "FIELD " + chat[0]["content"]
    both = model_dir(tmp_path / "both", "FILE {{ messages[0].content }}", chat_template="FIELD")
    assert Tokenizer(both).chat_template_source == str(both / "chat_template.jinja")
    assert_same(both, chat, add_generation_prompt=True)  # chat_template.jinja wins over the field
    named = model_dir(tmp_path / "named", chat_template=[
        {"name": "default", "template": "DEFAULT {{ messages | length }}"},
        {"name": "tool_use", "template": "TOOLS {{ tools | length }}"},
    ])
    assert assert_same(named, chat, add_generation_prompt=False) == "DEFAULT 1"
    assert assert_same(named, chat, tools=[WEATHER_TOOL]) == "TOOLS 1"
    extra = model_dir(tmp_path / "extra", "DEFAULT")
    (extra / "additional_chat_templates").mkdir()
    (extra / "additional_chat_templates" / "tool_use.jinja").write_text("EXTRA {{ tools[0].type }}")
    assert assert_same(extra, chat, tools=[WEATHER_TOOL]) == "EXTRA function"


def test_no_template_is_an_error_never_a_made_up_default(tmp_path: Path) -> None:
    bare = model_dir(tmp_path / "bare")
    tokenizer = Tokenizer(bare)
    assert not tokenizer.has_chat_template and tokenizer.chat_template is None
    with pytest.raises(InvalidRequestError, match="no chat template") as err:
        tokenizer.apply_chat_template(CHATS["one user turn"])
    assert err.value.param == "messages"
    file = tmp_path / "mine.jinja"
    file.write_text(official("qwen2.5-instruct.jinja"))
    given = Tokenizer(bare, chat_template=file)
    assert given.has_chat_template and given.chat_template_source == str(file)
    assert given.apply_chat_template(CHATS["one user turn"]).startswith("<|im_start|>system\nYou are Qwen")
    assert Tokenizer(bare, chat_template=str(file)).chat_template == file.read_text()
    inline = Tokenizer(bare, chat_template="{{ messages[0].role }}")
    assert inline.apply_chat_template(CHATS["one user turn"]) == "user"
    with pytest.raises(ModelLoadError, match=r"missing\.jinja"):
        Tokenizer(bare, chat_template=str(tmp_path / "missing.jinja"))


def test_bad_templates_and_bad_messages_are_precise_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"chat_template\.jinja.*does not compile"):
        Tokenizer(model_dir(tmp_path / "syntax", "{% for m in messages %}"))
    llama = Tokenizer(model_dir(tmp_path / "llama", official("llama-3.1-instruct.jinja")))
    two_calls = [*TOOL_CHAT[:2], {"role": "assistant", "tool_calls": TOOL_CHAT[2]["tool_calls"] * 2}]
    with pytest.raises(InvalidRequestError, match="single tool-calls") as err:  # raise_exception()
        llama.apply_chat_template(two_calls)
    assert err.value.param == "messages"
    with pytest.raises(InvalidRequestError, match="at least one message"):
        llama.apply_chat_template([])
    sneaky = Tokenizer(model_dir(tmp_path / "sneaky", "{% set ns = namespace(_x=1) %}{{ ns._x }}"))
    with pytest.raises(InvalidRequestError, match="underscore"):
        sneaky.apply_chat_template(CHATS["one user turn"])
    escape = Tokenizer(model_dir(tmp_path / "escape", "{{ messages.__class__.__mro__ }}"))
    with pytest.raises(InvalidRequestError, match="chat template failed on these messages"):
        escape.apply_chat_template(CHATS["one user turn"])
    with pytest.raises(InvalidRequestError, match="role"):
        llama.apply_chat_template(["just a string"])  # type: ignore[list-item]


def test_existing_field_template_of_random_models_still_renders(tmp_path: Path) -> None:
    shutil.rmtree(tmp_path, ignore_errors=True)
    root = tmp_path / "random"
    root.mkdir(parents=True)
    write_tokenizer(root, 300)  # writes the chat_template field into tokenizer_config.json
    assert Tokenizer(root).apply_chat_template([{"role": "user", "content": "hi"}]) == "<|user|>hi\n<|assistant|>"
