"""The text modality: a description generated from the scene, and its word-level tokenizer.

"a truck 7 m west of the user blocks the line of sight": the sentence states what the geometry
says (the user's place relative to the mast, the vehicles near it, what blocks the line of sight),
in whole metres and eight compass points, the way a captioner or an operator's log would.
The tokenizer is a ``tokenizers`` WordLevel model over a closed vocabulary built here, so every
description tokenizes without unknown words and the vocabulary is the same on every machine.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from edgecloud.wireless.geometry import KINDS
from edgecloud.wireless.scene import Scene

COMPASS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")
MAX_NUMBER = 150
MAX_VEHICLES_DESCRIBED = 4
WORDS = (
    "a",
    "the",
    "user",
    "on",
    "scooter",
    "m",
    "m/s",
    "from",
    "mast",
    "left",
    "right",
    "of",
    "its",
    "axis",
    "heading",
    "at",
    "blocks",
    "line",
    "sight",
    "is",
    "clear",
    "vehicles",
    "street",
    "no",
    "other",
    "and",
    ",",
    ".",
    "down",
)
SPECIAL = ("[pad]", "[unk]", "[cls]")


def compass(vector: np.ndarray) -> str:
    angle = np.degrees(np.arctan2(vector[1], vector[0]))
    return COMPASS[int(np.round(angle / 45.0)) % 8]


def describe(scene: Scene) -> str:
    """One sentence per fact, lower case, tokens separated by spaces."""
    bs, user = scene.bs, scene.user
    along = user[0] - bs[0]
    across = user[1] - bs[1]
    side = "left" if across >= 0 else "right"  # looking down the street (east), north is on the left
    speed = float(np.linalg.norm(scene.user_velocity))
    parts = [
        f"a user on a scooter {_number(along)} m down the street , {_number(abs(across))} m {side} of the mast axis ,"
        f" heading {compass(scene.user_velocity)} at {_number(speed)} m/s ."
    ]
    obstacles = scene.obstacles
    blockers = set(scene.los_blockers().tolist())
    offset = len(scene.buildings)
    vehicles = scene.vehicles
    if len(vehicles) == 0:
        parts.append("no vehicles on the street .")
    else:
        parts.append(f"{_number(len(vehicles))} vehicles on the street .")
        centres = vehicles.centre
        dist = np.linalg.norm(centres[:, :2] - user[None, :2], axis=1)
        # the vehicles on the line of sight first, then the nearest others
        blocking = [j for j in range(len(vehicles)) if offset + j in blockers]
        others = [int(j) for j in np.argsort(dist, kind="stable") if offset + int(j) not in blockers]
        for j in (blocking + others)[: max(MAX_VEHICLES_DESCRIBED, len(blocking))]:
            kind = KINDS[vehicles.kind[j]]
            sentence = f"a {kind} {_number(dist[j])} m {compass(centres[j] - user)} of the user"
            if offset + int(j) in blockers:
                sentence += " blocks the line of sight"
            parts.append(sentence + " .")
    building_blocks = any(obstacles.kind[i] == KINDS.index("building") for i in blockers)
    if building_blocks:
        parts.append("a building blocks the line of sight .")
    if not blockers:
        parts.append("the line of sight is clear .")
    return " ".join(parts)


def _number(value: float) -> str:
    return str(int(min(max(round(float(value)), 0), MAX_NUMBER)))


def vocabulary() -> dict[str, int]:
    tokens = [*SPECIAL, *WORDS, *COMPASS, *KINDS, *(str(n) for n in range(MAX_NUMBER + 1))]
    return {token: i for i, token in enumerate(dict.fromkeys(tokens))}


@lru_cache(maxsize=1)
def tokenizer() -> object:
    """A ``tokenizers.Tokenizer``: whitespace split, closed word-level vocabulary."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit

    tok = Tokenizer(WordLevel(vocab=vocabulary(), unk_token="[unk]"))
    tok.pre_tokenizer = WhitespaceSplit()
    return tok


def encode(texts: list[str], max_length: int) -> np.ndarray:
    """(n, max_length) int64 token ids: [cls] first, padded with [pad] (id 0), truncated at the end."""
    vocab = vocabulary()
    out = np.full((len(texts), max_length), vocab["[pad]"], dtype=np.int64)
    for i, encoding in enumerate(tokenizer().encode_batch(texts)):
        ids = [vocab["[cls]"], *encoding.ids][:max_length]
        out[i, : len(ids)] = ids
    return out
