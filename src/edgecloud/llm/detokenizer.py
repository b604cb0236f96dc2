"""Incremental detokenization for streaming, and stop-string detection on the growing text.

Tokens are turned into text with ``tokenizers``' own ``DecodeStream``, which holds back bytes
until they form valid UTF-8, so a streamed chunk never ends in half a character.
"""

from __future__ import annotations

from tokenizers.decoders import DecodeStream

from edgecloud.llm.tokenizer import Tokenizer


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: list[int],
        skip_special_tokens: bool,
        stop_strings: tuple[str, ...],
        include_stop_str: bool,
    ) -> None:
        self.tokenizer = tokenizer
        # Primed with the prompt's tail so the first generated token decodes in context (leading
        # spaces of SentencePiece tokens depend on what precedes them), unless that tail ends inside
        # a UTF-8 character: its stray bytes would otherwise leak into the completion's text.
        prime = prompt_ids[-4:]
        if not prime or tokenizer.decode(prime, skip_special_tokens=skip_special_tokens).endswith("\ufffd"):
            prime = []
        self.stream = DecodeStream(ids=prime or None, skip_special_tokens=skip_special_tokens)
        self.text = ""
        self.stop_strings = stop_strings
        self.include_stop_str = include_stop_str
        self._max_stop = max((len(s) for s in stop_strings), default=0)

    def add(self, token_id: int) -> str | None:
        """Appends one token; returns the stop string matched, if the text now contains one."""
        chunk = self.stream.step(self.tokenizer.hf, token_id)
        if not chunk:
            return None
        start = max(0, len(self.text) - self._max_stop + 1)
        self.text += chunk
        for stop in self.stop_strings:
            at = self.text.find(stop, start)
            if at != -1:
                self.text = self.text[: at + len(stop)] if self.include_stop_str else self.text[:at]
                return stop
        return None
