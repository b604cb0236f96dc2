"""Instance files and flags: every mistake is an error that names its place in the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecloud.cluster.config import ClusterConfigError, instances_from_flags, instances_from_toml
from edgecloud.llm.config import EngineConfig

BASE = EngineConfig(model="demo", kv_cache_memory_mb=32)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


def test_a_file_gives_roles_pools_counts_and_engine_options_over_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
[router]
policy = "pd"
options = { decode = "round-robin" }

[defaults]
threads = 1
kv_cache_memory_mb = 16

[[instance]]
name = "p"
role = "prefill"
pool = "relaxed"
max_num_batched_tokens = 512

[[instance]]
name = "d"
role = "decode"
count = 2
threads = 2
""")
    specs, router = instances_from_toml(path, BASE)
    assert [(s.name, s.role, s.pool) for s in specs] == [
        ("p", "prefill", "relaxed"), ("d-0", "decode", "default"), ("d-1", "decode", "default")]
    assert specs[0].engine.max_num_batched_tokens == 512 and specs[0].engine.num_threads == 1
    assert specs[1].engine.num_threads == 2 and specs[1].engine.kv_cache_memory_mb == 16
    assert specs[2].engine.model == "demo"  # from the command line's engine options
    assert (router.policy, router.policy_options) == ("pd", {"decode": "round-robin"})


@pytest.mark.parametrize(("text", "message"), [
    ("[[instance]]\nrole = 'both'\n", "instance[0].role must be one of mixed, prefill, decode, got 'both'"),
    ("[[instance]]\nrol = 'mixed'\n", "instance[0].rol: unknown key; allowed:"),
    ("[[instance]]\nthreads = 'two'\n", "instance[0].threads must be an integer, got 'two'"),
    ("[[instance]]\nthreads = true\n", "instance[0].threads must be an integer, got True"),
    ("[[instance]]\nmax_num_seqs = 0\n", "instance[0].max_num_seqs: max_num_seqs must be >= 1, got 0"),
    ("[[instance]]\ncount = 0\n", "instance[0].count must be >= 1, got 0"),
    ("[[instance]]\nname = 'a'\n[[instance]]\nname = 'a'\n", "instance name 'a' is used twice"),
    ("[[instance]]\nblock_size = 8\n[[instance]]\nname='b'\n", "same block_size"),
    ("[defaults]\nname = 'x'\n[[instance]]\n", "defaults.name: unknown key"),
    ("[router]\npolicy = 3\n[[instance]]\n", "router.policy must be a string, got 3"),
    ("[instances]\n", "unknown table 'instances'; allowed: router, defaults, instance"),
    ("[router]\npolicy = 'pd'\n", "needs at least one [[instance]] table"),
    ("[[instance]\n", "not valid TOML"),
])
def test_a_malformed_file_is_refused_naming_the_field(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ClusterConfigError, match=None) as error:
        instances_from_toml(write(tmp_path, text), BASE)
    assert message in str(error.value)
    assert "cluster.toml" in str(error.value) or "used twice" in message or "block_size" in message


def test_a_missing_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ClusterConfigError, match="no such instance file"):
        instances_from_toml(tmp_path / "nope.toml", BASE)


def test_flags_name_instances_by_role() -> None:
    specs = instances_from_flags(BASE, 1, prefill=2, decode=1, pool="strict")
    assert [s.name for s in specs] == ["mixed0", "prefill0", "prefill1", "decode0"]
    assert {s.pool for s in specs} == {"strict"}
    with pytest.raises(ClusterConfigError, match="at least one instance"):
        instances_from_flags(BASE, 0)
