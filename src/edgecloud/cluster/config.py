"""What a cluster is made of: its instances (model, role, pool, threads, engine options) and the
router's settings, from command-line flags or a TOML file.

A TOML file has three parts; every key is checked, and a mistake is reported with its place in
the file (``instance[2].role``) and what is allowed::

    [router]                        # optional: policy, connector (the flags override them)
    policy = "pd"
    connector = "zmq"

    [defaults]                      # optional: keys every instance inherits
    model = "demo"
    threads = 1
    kv_cache_memory_mb = 64

    [[instance]]                    # one table per instance
    name = "p0"
    role = "prefill"                # mixed (default) | prefill | decode
    pool = "default"

    [[instance]]
    name = "d0"
    role = "decode"
    count = 2                       # shorthand for d0-0, d0-1 with the same settings
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from edgecloud.llm.config import EngineConfig
from edgecloud.llm.errors import InvalidRequestError

Role = Literal["mixed", "prefill", "decode"]
ROLES: tuple[Role, ...] = ("mixed", "prefill", "decode")


class ClusterConfigError(ValueError):
    """A cluster description that cannot run; the message names the field (and file) at fault."""


@dataclass(frozen=True)
class InstanceSpec:
    """One engine instance: its name, its role in prefill/decode disaggregation, the pool it
    belongs to (OOCO's latency-strict and latency-relaxed pools, or any grouping a policy uses),
    and the engine it runs (model, threads, KV cache, batch limits)."""

    name: str
    engine: EngineConfig
    role: Role = "mixed"
    pool: str = "default"


@dataclass
class RouterSettings:
    policy: str | None = None
    connector: str | None = None
    policy_options: dict[str, Any] = field(default_factory=dict)


# Instance keys of a TOML file: engine options by their EngineConfig names, plus these.
_ENGINE_KEYS = {
    "model": str, "dtype": str, "device": str, "block_size": int, "kv_cache_memory_mb": (int, float),
    "max_num_seqs": int, "max_num_batched_tokens": int, "max_model_len": int, "enable_prefix_caching": bool,
    "attention_backend": str, "seed": int, "threads": int, "chat_template": str,
    "flex_max_batched_tokens": int,  # offline work per step (OOCO's pools set it apart, issue #19)
}
_INSTANCE_KEYS = {"name": str, "role": str, "pool": str, "count": int, **_ENGINE_KEYS}
_ROUTER_KEYS = {"policy": str, "connector": str, "options": dict}


def _type_name(expected: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table"}
    if isinstance(expected, tuple):
        return "a number"
    return names.get(expected, expected.__name__)


def _check_table(table: Any, allowed: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ClusterConfigError(f"{where} must be a table, got {type(table).__name__}")
    for key, value in table.items():
        if key not in allowed:
            raise ClusterConfigError(f"{where}.{key}: unknown key; allowed: {', '.join(sorted(allowed))}")
        expected = allowed[key]
        ok = isinstance(value, expected) and not (isinstance(value, bool) and expected is not bool)
        if not ok:
            raise ClusterConfigError(f"{where}.{key} must be {_type_name(expected)}, got {value!r}")
    return table


def engine_config(base: EngineConfig, options: dict[str, Any], where: str) -> EngineConfig:
    """``base`` with ``options`` (TOML instance keys) applied; a bad value names its key."""
    fields = {("num_threads" if k == "threads" else k): v for k, v in options.items() if k in _ENGINE_KEYS}
    try:
        return replace(base, **fields)
    except InvalidRequestError as error:
        param = "threads" if error.param == "num_threads" else error.param
        raise ClusterConfigError(f"{where}.{param}: {error}") from None


def check_role(role: str, where: str) -> Role:
    if role not in ROLES:
        raise ClusterConfigError(f"{where} must be one of {', '.join(ROLES)}, got {role!r}")
    return role  # type: ignore[return-value]


def instances_from_toml(path: str | Path, base: EngineConfig) -> tuple[list[InstanceSpec], RouterSettings]:
    """Instances and router settings from a TOML file; ``base`` holds the engine options given on
    the command line, which ``[defaults]`` and each instance override."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterConfigError(f"{path}: no such instance file") from None
    except tomllib.TOMLDecodeError as error:
        raise ClusterConfigError(f"{path}: not valid TOML: {error}") from None
    where = str(path)
    for key in raw:
        if key not in ("router", "defaults", "instance"):
            raise ClusterConfigError(f"{where}: unknown table {key!r}; allowed: router, defaults, instance")
    router_table = _check_table(raw.get("router", {}), _ROUTER_KEYS, f"{where}: router")
    router = RouterSettings(router_table.get("policy"), router_table.get("connector"),
                            dict(router_table.get("options", {})))
    defaults = _check_table(raw.get("defaults", {}), {k: v for k, v in _INSTANCE_KEYS.items()
                                                       if k not in ("name", "count")}, f"{where}: defaults")
    tables = raw.get("instance")
    if not isinstance(tables, list) or not tables:
        raise ClusterConfigError(f"{where}: needs at least one [[instance]] table")
    specs: list[InstanceSpec] = []
    for index, table in enumerate(tables):
        at = f"{where}: instance[{index}]"
        options = {**defaults, **_check_table(table, _INSTANCE_KEYS, at)}
        role = check_role(options.get("role", "mixed"), f"{at}.role")
        count = options.get("count", 1)
        if count < 1:
            raise ClusterConfigError(f"{at}.count must be >= 1, got {count}")
        name = options.get("name", f"{role}{index}")
        engine = engine_config(base, options, at)
        pool = options.get("pool", "default")
        specs += [InstanceSpec(name if count == 1 else f"{name}-{i}", engine, role, pool) for i in range(count)]
    check_instances(specs)
    return specs, router


def instances_from_flags(
    base: EngineConfig, mixed: int, prefill: int = 0, decode: int = 0, pool: str = "default"
) -> list[InstanceSpec]:
    """``mixed`` + ``prefill`` + ``decode`` instances, all running ``base``."""
    specs = [InstanceSpec(f"mixed{i}", base, "mixed", pool) for i in range(mixed)]
    specs += [InstanceSpec(f"prefill{i}", base, "prefill", pool) for i in range(prefill)]
    specs += [InstanceSpec(f"decode{i}", base, "decode", pool) for i in range(decode)]
    check_instances(specs)
    return specs


def check_instances(specs: list[InstanceSpec]) -> None:
    """Rules every cluster follows: at least one instance, unique names, one model and one block
    size (KV blocks move between instances by key)."""
    if not specs:
        raise ClusterConfigError("a cluster needs at least one instance")
    seen: set[str] = set()
    for spec in specs:
        if not spec.name or any(c.isspace() for c in spec.name):
            raise ClusterConfigError(f"instance name must be non-empty without spaces, got {spec.name!r}")
        if spec.name in seen:
            raise ClusterConfigError(f"instance name {spec.name!r} is used twice")
        seen.add(spec.name)
    models = {spec.engine.model for spec in specs}
    if len(models) > 1:
        raise ClusterConfigError(f"every instance must serve the same model, got {sorted(map(str, models))}")
    sizes = {spec.engine.block_size for spec in specs}
    if len(sizes) > 1:
        raise ClusterConfigError(f"every instance must use the same block_size (KV moves by block), "
                                 f"got {sorted(sizes)}")
