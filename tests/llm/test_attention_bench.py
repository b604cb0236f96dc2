"""``edgecloud bench attention``: tree syntax, the synthetic batch, and the JSON it writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgecloud.cli import main
from edgecloud.llm.attention.bench import parse_heads, parse_tree, tree_batch


def test_tree_batch_follows_the_spec() -> None:
    spec = parse_tree("1,2,4_32,16,5", block_size=16)
    batch, num_blocks = tree_batch(spec, block_size=16)
    assert batch.context_lens == [53] * 4
    assert num_blocks == 2 + 2 * 1 + 4 * 1
    tables = batch.block_tables
    assert len({t[0] for t in tables}) == 1 and len({tuple(t[:2]) for t in tables}) == 1
    assert len({t[2] for t in tables}) == 2 and len({t[3] for t in tables}) == 4
    assert sorted(b for t in tables for b in t) == sorted([tables[0][0], tables[0][1]] * 4 + [
        t[2] for t in tables] + [t[3] for t in tables])


@pytest.mark.parametrize(("text", "message"), [
    ("1,4_64", "2 node counts but 1 lengths"),
    ("1,4-64", "must look like"),
    ("1,3,4_16,16,16", "level 2 has 4 nodes, not a multiple of the 3"),
    ("1,2_20,8", "level 0 length 20 must be a multiple of block_size=16"),
    ("1,0_16,8", "must be >= 1"),
])
def test_bad_trees_are_refused_precisely(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_tree(text, block_size=16)


def test_bad_heads_are_refused() -> None:
    assert parse_heads("32/8") == (32, 8)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        parse_heads("32/6")


def test_cli_writes_the_fields_of_the_issue(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    code = main(["bench", "attention", "--trees", "1,3_32,7", "--heads", "4/2,2/2", "--repeats", "1",
                 "--threads", "1", "--json", str(out), "--plot", str(tmp_path / "out.png")])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["threads"] == 1
    assert [(c["tree"], c["heads"]) for c in result["cases"]] == [("1,3_32,7", "4/2"), ("1,3_32,7", "2/2")]
    for case in result["cases"]:
        assert set(case) == {"tree", "heads", "dense_ms", "cascade_ms", "prefix_ms", "kv_bytes_dense",
                             "kv_bytes_prefix", "pack_ms"}
        assert case["kv_bytes_dense"] == 3 * 39 * 2 * int(case["heads"].split("/")[1]) * 128 * 4
    for extra in result["diagnostics"]:
        assert extra["max_abs_err_prefix"] < 1e-5 and extra["max_abs_err_cascade"] < 1e-5
    assert (tmp_path / "out.png").stat().st_size > 0


def test_cli_refuses_a_bad_tree() -> None:
    with pytest.raises(SystemExit, match="level 0 length 20 must be a multiple"):
        main(["bench", "attention", "--trees", "1,2_20,8", "--threads", "1"])
