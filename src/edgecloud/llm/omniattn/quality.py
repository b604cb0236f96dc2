"""Long held-out texts and a needle-in-a-haystack test, from files every Python installation ships.

Texts are read from the running interpreter's standard library (``sysconfig``'s ``stdlib`` path),
so they are on every machine with no download; their SHA-256 is recorded with every result, since
another Python version ships other files.

- **Perplexity texts** (held out from the search): ``argparse.py`` and ``difflib.py`` (source with
  docstrings), and the Python Language Reference as pydoc ships it (``pydoc_data/topics.py``: the
  documentation text of each topic, in key order, from the start).
- **Calibration texts** (the search only): ``inspect.py`` and ``tarfile.py``; calibration needles
  hide in the pydoc topics text from character 300,000 on, test needles from character 100,000 on.
- **Needle in a haystack** (passkey retrieval as in Mohtashami & Jaggi, 2023, in natural text as
  Kamradt's test): a five-digit pass key is stated once at a given depth of a haystack of
  documentation text; the prompt ends by asking for it. Correct when the first number generated
  greedily is the key.
"""

from __future__ import annotations

import hashlib
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from edgecloud.llm.tokenizer import Tokenizer

EVAL_FILES = ("argparse.py", "difflib.py", "pydoc_data/topics.py")
CALIBRATION_FILES = ("inspect.py", "tarfile.py")
TEST_HAYSTACK_OFFSET = 100_000
CALIBRATION_HAYSTACK_OFFSET = 300_000

NEEDLE_INTRO = (
    "There is an important pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the pass key.\n\n"
)
NEEDLE = "\n\nThe pass key is {key}. Remember it. {key} is the pass key.\n\n"
NEEDLE_QUESTION = "\n\nWhat is the pass key? The pass key is"


@dataclass(frozen=True)
class SourceText:
    name: str  # relative to the standard library
    text: str
    sha256: str  # of the file's bytes


def stdlib_path(name: str) -> Path:
    return Path(sysconfig.get_paths()["stdlib"]) / name


def read_text(name: str) -> SourceText:
    """A standard-library file as text; ``pydoc_data/topics.py`` as the documentation it holds."""
    path = stdlib_path(name)
    raw = path.read_bytes()
    if name == "pydoc_data/topics.py":
        namespace: dict[str, dict[str, str]] = {}
        exec(compile(raw, str(path), "exec"), namespace)  # a dict literal: the docs pydoc shows
        text = "\n\n".join(namespace["topics"][key] for key in sorted(namespace["topics"]))
    else:
        text = raw.decode("utf-8")
    return SourceText(name, text, hashlib.sha256(raw).hexdigest())


def text_tokens(tokenizer: Tokenizer, source: SourceText, num_tokens: int, offset_chars: int = 0) -> list[int]:
    """The first ``num_tokens`` tokens of the text from ``offset_chars`` on (no special tokens)."""
    # about 3-4 characters a token in code and English; read enough, then cut
    chunk = source.text[offset_chars : offset_chars + num_tokens * 8]
    ids = tokenizer.encode(chunk, add_special_tokens=False)
    if len(ids) < num_tokens:
        raise ValueError(f"{source.name} has fewer than {num_tokens} tokens after character {offset_chars}")
    return ids[:num_tokens]


@dataclass(frozen=True)
class NeedleCase:
    context: int  # prompt tokens
    depth: float  # where the needle sits in the haystack, 0 = start, 1 = end
    key: str
    prompt: list[int]


def needle_cases(
    tokenizer: Tokenizer, haystack: SourceText, contexts: list[int], depths: list[float], offset_chars: int, seed: int
) -> list[NeedleCase]:
    """One prompt of exactly ``context`` tokens per (context, depth), each with its own key."""
    rng = random.Random(seed)
    intro = tokenizer.encode(NEEDLE_INTRO, add_special_tokens=False)
    question = tokenizer.encode(NEEDLE_QUESTION, add_special_tokens=False)
    cases = []
    for context in contexts:
        for depth in depths:
            key = str(rng.randrange(10_000, 100_000))
            needle = tokenizer.encode(NEEDLE.format(key=key), add_special_tokens=False)
            filler_len = context - len(intro) - len(needle) - len(question)
            if filler_len < 1:
                raise ValueError(f"context {context} is too short for the needle prompt")
            filler = text_tokens(tokenizer, haystack, filler_len, offset_chars)
            at = round(depth * filler_len)
            cases.append(NeedleCase(context, depth, key, intro + filler[:at] + needle + filler[at:] + question))
    return cases


def answer_key(text: str) -> str | None:
    """The first number in a generated answer."""
    match = re.search(r"\d+", text)
    return match.group(0) if match else None
