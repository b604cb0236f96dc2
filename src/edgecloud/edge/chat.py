"""One chat turn as token ids, without rendering or tokenizing the conversation before it (DisCEdge,
arXiv 2511.22599, §3.2: the context manager appends the new message's tokens to the stored ones).

A chat template renders a whole conversation. For a turn only the text it adds is needed: the
template's rendering of the history plus the new user message (with the generation prompt), less
its rendering of the history alone. For the templates in use (ChatML, Llama 3, Mistral, SmolLM2's,
...) that difference depends on the history only through whether it is empty (the first turn
carries the system preamble), so a fixed stand-in history gives it; :class:`ChatFormat` checks
this on a probe conversation at start and refuses templates for which it does not hold. The answer
is appended as the tokens the engine sampled (its end-of-turn token dropped) and the template's
closing text after an assistant message.

Each piece is tokenized on its own (the text before the user's message, the message, the text
after): the user's message and the answer then have exact token spans, and a replica with the same
tokenizer decodes the texts from the tokens instead of receiving them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from edgecloud.edge.turns import FINGERPRINT_BYTES, Turn
from edgecloud.llm.tokenizer import Tokenizer

_PROBE_USER = "\u2063probe question\u2063"
_PROBE_ANSWER = "\u2063probe answer\u2063"


class TemplateError(ValueError):
    """A chat template that a turn cannot be rendered with on its own."""


@dataclass(frozen=True)
class UserDelta:
    ids: list[int]
    span: tuple[int, int]  # the user's message within ids


def context_fingerprint(tokenizer: Tokenizer, model_fingerprint: bytes) -> bytes:
    """What stored token ids are valid for: the tokenizer, the chat template and the model."""
    h = hashlib.sha256(b"edgecloud.edge context v1\0")
    h.update(tokenizer.hf.to_str().encode())
    h.update((tokenizer.chat_template or "").encode())
    h.update(model_fingerprint)
    return h.digest()[:FINGERPRINT_BYTES]


class ChatFormat:
    def __init__(self, tokenizer: Tokenizer, fingerprint: bytes) -> None:
        if not tokenizer.has_chat_template:
            raise TemplateError("the model has no chat template: give the node one with --chat-template FILE")
        self.tokenizer = tokenizer
        self.fingerprint = fingerprint
        self._history = [{"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_ANSWER}]
        self._history_text = self._render(self._history, False)
        with_user = self._render([*self._history[:1]], True)
        closed = self._render(self._history, False)
        if not closed.startswith(with_user + _PROBE_ANSWER):
            raise TemplateError("the chat template does not render an answer after the generation prompt verbatim")
        self.closing_text = closed[len(with_user) + len(_PROBE_ANSWER):]
        self.closing_ids = self.encode(self.closing_text)
        self._check_incremental()

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def _user_text(self, text: str, first: bool) -> str:
        if first:
            return self._render([{"role": "user", "content": text}], True)
        full = self._render([*self._history, {"role": "user", "content": text}], True)
        if not full.startswith(self._history_text):
            raise TemplateError("the chat template re-renders the history when a message is added")
        return full[len(self._history_text):]

    def _check_incremental(self) -> None:
        turns = [("What is the capital of France?", "Paris."), ("And of Italy?", "Rome, since 1871.")]
        messages: list[dict[str, str]] = []
        pieces = []
        for i, (question, answer) in enumerate(turns):
            pieces += [self._user_text(question, i == 0), answer, self.closing_text]
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        pieces.append(self._user_text("Thanks.", False))
        messages.append({"role": "user", "content": "Thanks."})
        if "".join(pieces) != self._render(messages, True):
            raise TemplateError(
                "the chat template is not incremental (a turn's rendering depends on the history beyond its "
                "first message): run the node in text mode"
            )

    def user_delta(self, text: str, first: bool) -> UserDelta:
        rendered = self._user_text(text, first)
        at = rendered.rfind(text) if text else -1
        if at < 0:  # the template changed the message (trimmed it, say): no exact span
            return UserDelta(self.encode(rendered), (0, 0))
        before, after = self.encode(rendered[:at]), self.encode(rendered[at + len(text):])
        middle = self.encode(text)
        return UserDelta(before + middle + after, (len(before), len(before) + len(middle)))

    def answer_ids(self, sampled: Sequence[int]) -> list[int]:
        """The answer's own tokens: the sampled ones less a final end-of-turn token (the closing
        text brings the template's own)."""
        ids = list(sampled)
        ends = {self.tokenizer.eos_token_id, *self.closing_ids[:1]}
        if ids and ids[-1] in ends:
            ids.pop()
        return ids

    def turn_tokens(self, user: UserDelta, answer: Sequence[int]) -> tuple[list[int], tuple[int, int]]:
        """The turn's token delta and the answer's span in it."""
        start = len(user.ids)
        return [*user.ids, *answer, *self.closing_ids], (start, start + len(answer))

    def decode_user(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def decode_answer(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def derive_texts(self, turn: Turn) -> tuple[str, str]:
        """A token turn's user message and answer, decoded from its spans (same tokenizer only)."""
        ids = turn.token_ids()
        (a, b), (c, d) = turn.user_span, turn.answer_span
        return self.decode_user(ids[a:b]), self.decode_answer(ids[c:d])

    def tokens_of(self, turn: Turn) -> list[int]:
        """A turn's token delta for this node: as stored when made with this tokenizer, else
        rendered again from its text."""
        if turn.form == "tokens" and turn.fingerprint == self.fingerprint:
            return turn.token_ids()
        assert turn.user_text is not None and turn.answer_text is not None
        user = self.user_delta(turn.user_text, turn.depth == 0)
        return self.turn_tokens(user, self.encode(turn.answer_text))[0]

    def full_prompt(self, history: Sequence[tuple[str, str]], user_text: str) -> list[int]:
        """The baseline's prompt: the whole conversation rendered and tokenized again."""
        messages = []
        for question, answer in history:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        messages.append({"role": "user", "content": user_text})
        return self.encode(self._render(messages, True))
