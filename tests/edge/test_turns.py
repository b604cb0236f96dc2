"""Versions, token packing, digests and the checks a received turn passes."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgecloud.edge.turns import (
    Turn,
    TurnError,
    VersionError,
    check_turn,
    covers,
    format_version,
    merged,
    pack_tokens,
    parse_version,
    sealed,
    unpack_tokens,
    verify,
)

NODES = ["edge-a", "edge-b", "edge-c"]


def turn(**fields: object) -> Turn:
    base: dict[str, object] = dict(session="s1", origin="edge-a", seq=1, deps={}, form="text", user_text="hi",
                                   answer_text="hello")
    base.update(fields)
    return sealed(Turn(**base))  # type: ignore[arg-type]


def test_versions_parse_format_and_compare() -> None:
    assert parse_version("edge-b:1,edge-a:3") == {"edge-a": 3, "edge-b": 1}
    assert format_version({"edge-b": 1, "edge-a": 3, "edge-c": 0}) == "edge-a:3,edge-b:1"
    assert parse_version("0") == parse_version("") == {} and format_version({}) == "0"
    assert covers({"edge-a": 3, "edge-b": 1}, {"edge-a": 2}) and not covers({"edge-a": 1}, {"edge-a": 1, "edge-b": 1})
    assert merged({"edge-a": 3}, {"edge-a": 1, "edge-b": 2}) == {"edge-a": 3, "edge-b": 2}
    for bad in ("edge-a", "edge-a:x", "edge-a:1,edge-a:2", "a b:1", "edge-a:-1"):
        with pytest.raises(VersionError, match="session version"):
            parse_version(bad)


@given(st.lists(st.integers(0, 2**32 - 1), max_size=50))
def test_token_packing_round_trips_in_two_bytes_when_it_can(ids: list[int]) -> None:
    data, width = pack_tokens(ids)
    assert unpack_tokens(data, width) == ids
    assert width == (2 if all(i < 2**16 for i in ids) else 4) and len(data) == width * len(ids)


def test_a_turn_changed_anywhere_fails_its_digest() -> None:
    good = turn(deps={"edge-b": 2})
    verify(good)
    for change in ({"answer_text": "hullo"}, {"user_text": "ho"}, {"deps": {"edge-b": 3}}, {"seq": 2},
                   {"session": "s2"}, {"created_at": 1.0}):
        with pytest.raises(TurnError, match="does not match its digest") as caught:
            verify(msgspec.structs.replace(good, **change))
        assert caught.value.code == "corrupt_turn"


def test_check_turn_names_what_is_wrong() -> None:
    check_turn(turn(), NODES)
    cases = [
        (turn(origin="edge-x"), "origin 'edge-x' is not a node"),
        (turn(seq=2), "deps hold 0 turns of its origin, expected 1"),
        (turn(deps={"edge-z": 1}), "name unknown nodes"),
        (turn(form="tokens", tokens=b"\x01\x00\x02", width=2, fingerprint=b"f" * 16), "does not divide"),
        (turn(form="tokens", tokens=b"\x01\x00", width=2, fingerprint=b"f" * 16, answer_span=(0, 3)),
         "answer_span 0:3 is outside the 1 tokens"),
        (turn(form="tokens", tokens=b"", width=2, fingerprint=b"short"), "fingerprint must be 16 bytes"),
        (msgspec.structs.replace(turn(), digest=b"x"), "digest must be 16 bytes"),
    ]
    for bad, message in cases:
        with pytest.raises(TurnError, match=message):
            check_turn(bad, NODES)


def test_a_stripped_turn_leaves_out_only_derivable_texts() -> None:
    tokens = turn(form="tokens", tokens=b"\x01\x00", width=2, fingerprint=b"f" * 16, derivable=True)
    assert tokens.stripped().user_text is None and tokens.stripped().digest == tokens.digest
    assert turn().stripped().user_text == "hi"  # a text turn keeps them
    kept = turn(form="tokens", tokens=b"\x01\x00", width=2, fingerprint=b"f" * 16, derivable=False)
    assert kept.stripped().answer_text == "hello"
