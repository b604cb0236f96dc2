"""Incremental detokenization for streaming, and stop-string detection on the growing text.

Tokens are turned into text with ``tokenizers``' own ``DecodeStream``, which holds back bytes
until they form valid UTF-8, so a streamed chunk never ends in half a character. The text is kept
as a list of pieces plus a short tail: the last ``len(longest stop string) - 1`` characters are
held back, since they may begin a stop string that the next token completes. Each token costs
O(1) work and memory whatever the length of the text (a stream of L tokens costs O(L) in all).
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
        self.pieces: list[str] = []  # text no stop string can reach back into any more
        self.tail = ""  # held back: may be the start of a stop string
        self.taken = 0  # pieces already handed out by take()
        self.stop_strings = stop_strings
        self.include_stop_str = include_stop_str
        self._hold = max((len(s) for s in stop_strings), default=1) - 1
        self.stopped = False

    @property
    def text(self) -> str:
        return "".join(self.pieces) + self.tail

    def add(self, token_id: int) -> str | None:
        """Appends one token; returns the stop string matched, if the text now contains one."""
        chunk = self.stream.step(self.tokenizer.hf, token_id)
        if not chunk:
            return None
        window = self.tail + chunk
        found = [(at, stop) for stop in self.stop_strings if (at := window.find(stop)) != -1]
        if found:
            at, stop = min(found)
            self.pieces.append(window[: at + len(stop)] if self.include_stop_str else window[:at])
            self.tail = ""
            self.stopped = True
            return stop
        cut = max(0, len(window) - self._hold)
        if cut:
            self.pieces.append(window[:cut])
        self.tail = window[cut:]
        return None

    def take(self, finished: bool) -> str:
        """The text not handed out before: every piece that can no longer change, and the held-back
        tail too once the completion is finished."""
        new = "".join(self.pieces[self.taken :])
        self.taken = len(self.pieces)
        if finished and self.tail:
            new += self.tail
            self.pieces.append(self.tail)
            self.taken = len(self.pieces)
            self.tail = ""
        return new
