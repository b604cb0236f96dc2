"""Multi-LoRA in the engine: greedy tokens equal PEFT's for every adapter in one mixed batch (float32),
also after unload and reload; bad adapters are clear errors and the engine keeps serving."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from edgecloud.llm import InvalidRequestError, SamplingParams
from edgecloud.llm.config import EngineConfig
from edgecloud.llm.engine import LLMEngine
from edgecloud.llm.random_model import write_random_model

from .peft_adapters import FIVE, AdapterSpec, PeftReference, write_adapter

MAX_TOKENS = 6
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


@pytest.fixture(scope="module")
def adapters(llama_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {spec.name: write_adapter(llama_dir, root / spec.name, spec, seed=i) for i, spec in enumerate(FIVE)}


@pytest.fixture(scope="module")
def peft_ref(llama_dir: Path) -> PeftReference:
    return PeftReference(llama_dir)


def make_engine(llama_dir: Path, adapters: dict[str, Path], **options: object) -> LLMEngine:
    config = dict(model=str(llama_dir), dtype="float32", block_size=4, kv_cache_memory_mb=2, max_loras=5,
                  max_lora_rank=32, lora_modules=tuple((n, str(p)) for n, p in adapters.items()))
    config.update(options)
    return LLMEngine(EngineConfig(**config))  # type: ignore[arg-type]


def run(engine: LLMEngine, jobs: list[tuple[str | None, list[int]]]) -> dict[str, list[int]]:
    for i, (adapter, prompt) in enumerate(jobs):
        engine.add_request(f"r{i}", prompt, GREEDY, adapter_id=adapter)
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                tokens[out.request_id] = out.outputs[0].token_ids
    return tokens


def mixed_jobs(names: list[str], seed: int) -> list[tuple[str | None, list[int]]]:
    rng = random.Random(seed)
    jobs: list[tuple[str | None, list[int]]] = []
    for adapter in [*names, None, *names, None]:
        jobs.append((adapter, [rng.randrange(2, 400) for _ in range(rng.randint(3, 17))]))
    rng.shuffle(jobs)
    return jobs


def check_against_peft(engine: LLMEngine, jobs: list[tuple[str | None, list[int]]], adapters: dict[str, Path],
                       peft_ref: PeftReference) -> int:
    got = run(engine, jobs)
    changed = 0
    for i, (adapter, prompt) in enumerate(jobs):
        want = peft_ref.greedy(None if adapter is None else adapters[adapter], prompt, MAX_TOKENS)
        assert got[f"r{i}"] == want, f"request {i} (adapter {adapter})"
        if adapter is not None:
            changed += want != peft_ref.greedy(None, prompt, MAX_TOKENS)
    assert engine.kv.num_free_blocks == engine.kv.num_blocks
    return changed


def test_five_ranks_and_no_adapter_in_one_batch_equal_peft(
    llama_dir: Path, adapters: dict[str, Path], peft_ref: PeftReference
) -> None:
    engine = make_engine(llama_dir, adapters)
    jobs = mixed_jobs(list(adapters), seed=0)
    steps_before = engine.core.num_steps
    changed = check_against_peft(engine, jobs, adapters, peft_ref)
    assert changed >= 8  # the adapters really change the tokens, so equality says something
    # every request was admitted in the first step: the five adapters ran side by side
    assert engine.core.num_steps - steps_before == MAX_TOKENS
    # unload and load again (into other slots, after the cache forgot them): still PEFT's tokens
    for name in adapters:
        engine.core.control("unload_lora_adapter", {"lora_name": name})
    assert engine.core.control("list_lora_adapters", {}) == []
    for name in reversed(list(adapters)):
        engine.core.control("load_lora_adapter", {"lora_name": name, "lora_path": str(adapters[name])})
    check_against_peft(engine, jobs, adapters, peft_ref)


def test_chunked_prefill_preemption_and_two_slots(
    llama_dir: Path, adapters: dict[str, Path], peft_ref: PeftReference
) -> None:
    # two device slots for five adapters, prompts cut into chunks, a KV pool small enough to preempt
    engine = make_engine(llama_dir, adapters, max_loras=2, max_num_batched_tokens=9, kv_cache_memory_mb=0.1)
    check_against_peft(engine, mixed_jobs(list(adapters), seed=0), adapters, peft_ref)
    stats = engine.core.lora.cache.stats  # type: ignore[union-attr]
    assert stats.slot_writes >= 5


def test_the_scheduler_runs_at_most_max_loras_adapters(llama_dir: Path, adapters: dict[str, Path]) -> None:
    engine = make_engine(llama_dir, adapters, max_loras=2)
    for i, name in enumerate([*adapters, *adapters]):
        engine.add_request(f"q{i}", [5, 6, 7], GREEDY, adapter_id=name)
    engine.add_request("base", [5, 6, 7], GREEDY)
    seen: set[str | None] = set()
    while engine.has_unfinished():
        running = {r.adapter_id for r in engine.scheduler.running if r.adapter_id}
        assert len(running) <= 2
        engine.scheduler.check_invariants()
        seen |= running
        engine.step()
    assert seen == set(adapters)


def test_prefix_cache_blocks_are_keyed_by_adapter(llama_dir: Path, adapters: dict[str, Path]) -> None:
    engine = make_engine(llama_dir, adapters)
    prompt = list(range(10, 30))
    run(engine, [("r4-all", prompt)])
    hits = engine.stats().prefix_cache_hits
    run(engine, [("r2-qv", prompt)])  # same tokens, another adapter: no hit
    assert engine.stats().prefix_cache_hits == hits
    run(engine, [("r4-all", prompt)])
    assert engine.stats().prefix_cache_hits > hits


def test_a_different_adapter_under_an_old_name_never_hits_its_blocks(
    llama_dir: Path, adapters: dict[str, Path], peft_ref: PeftReference
) -> None:
    engine = make_engine(llama_dir, {"a": adapters["r4-all"]})
    prompt = list(range(40, 60))
    run(engine, [("a", prompt)])
    engine.core.control("unload_lora_adapter", {"lora_name": "a"})
    engine.core.control("load_lora_adapter", {"lora_name": "a", "lora_path": str(adapters["r16-attn"])})
    assert run(engine, [("a", prompt)])["r0"] == peft_ref.greedy(adapters["r16-attn"], prompt, MAX_TOKENS)


def corrupt_copy(src: Path, dst: Path, mutate: str) -> Path:
    shutil.copytree(src, dst)
    if mutate == "weights-missing":
        (dst / "adapter_model.safetensors").unlink()
    elif mutate == "weights-corrupt":
        data = (dst / "adapter_model.safetensors").read_bytes()
        (dst / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    elif mutate == "config-corrupt":
        (dst / "adapter_config.json").write_text("{not json")
    elif mutate == "dora":
        config = json.loads((dst / "adapter_config.json").read_text())
        config["use_dora"] = True
        (dst / "adapter_config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize(("mutate", "message"), [
    ("weights-missing", "adapter_model.safetensors is missing"),
    ("weights-corrupt", "not a readable safetensors file"),
    ("config-corrupt", "adapter_config.json is not valid JSON"),
    ("dora", r"use_dora=true \(DoRA\) is not supported"),
])
def test_bad_adapter_files_are_clear_errors(
    llama_dir: Path, adapters: dict[str, Path], tmp_path: Path, mutate: str, message: str
) -> None:
    engine = make_engine(llama_dir, {"ok": adapters["r2-qv"]})
    bad = corrupt_copy(adapters["r4-all"], tmp_path / mutate, mutate)
    with pytest.raises(InvalidRequestError, match=message) as info:
        engine.core.control("load_lora_adapter", {"lora_name": "bad", "lora_path": str(bad)})
    assert info.value.param == "lora_path"
    assert run(engine, [("ok", [3, 4, 5]), (None, [3, 4, 5])]).keys() == {"r0", "r1"}  # still serving


def test_missing_directory_rank_too_large_and_another_base_model(
    llama_dir: Path, adapters: dict[str, Path], tmp_path: Path
) -> None:
    engine = make_engine(llama_dir, {}, enable_lora=True, max_lora_rank=8)
    load = engine.core.control
    with pytest.raises(InvalidRequestError, match="is not a directory"):
        load("load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path / "nowhere")})
    with pytest.raises(InvalidRequestError, match=r"rank 16, above this engine's max_lora_rank=8"):
        load("load_lora_adapter", {"lora_name": "x", "lora_path": str(adapters["r16-attn"])})
    other_base = write_random_model(tmp_path / "wide", hidden_size=96, num_attention_heads=4)
    other = write_adapter(other_base, tmp_path / "other-adapter", AdapterSpec("o", 4, ("q_proj",)), seed=0)
    with pytest.raises(InvalidRequestError, match="the adapter is for another base model"):
        load("load_lora_adapter", {"lora_name": "x", "lora_path": str(other)})
    with pytest.raises(InvalidRequestError, match="unknown LoRA adapter 'x'"):
        engine.add_request("r", [3, 4], GREEDY, adapter_id="x")
    with pytest.raises(InvalidRequestError, match="unknown LoRA adapter 'x'"):
        load("unload_lora_adapter", {"lora_name": "x"})
    assert run(engine, [(None, [3, 4, 5])]).keys() == {"r0"}


def test_loading_past_a_host_cache_of_pinned_adapters(llama_dir: Path, adapters: dict[str, Path]) -> None:
    engine = make_engine(llama_dir, {}, enable_lora=True, max_loras=1, max_cpu_loras=2)
    load = engine.core.control
    names = list(adapters)
    for name in names[:2]:
        load("load_lora_adapter", {"lora_name": name, "lora_path": str(adapters[name]), "pinned": True})
    with pytest.raises(InvalidRequestError, match="the host adapter cache is full"):
        load("load_lora_adapter", {"lora_name": names[2], "lora_path": str(adapters[names[2]])})
    load("pin_lora_adapter", {"lora_name": names[0], "pinned": False})
    load("load_lora_adapter", {"lora_name": names[2], "lora_path": str(adapters[names[2]])})  # evicts names[0]
    listed = {a["name"]: a for a in load("list_lora_adapters", {})}
    assert not listed[names[0]]["in_host"] and listed[names[2]]["in_host"]
    # an evicted adapter is read from disk again when a request needs it
    assert run(engine, [(names[0], [3, 4, 5])]).keys() == {"r0"}
    assert engine.core.lora.cache.stats.disk_reads == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("async_loads", [True, False])
def test_an_evicted_adapter_is_read_off_the_step_and_only_its_requests_wait(
    llama_dir: Path, adapters: dict[str, Path], peft_ref: PeftReference, async_loads: bool
) -> None:
    engine = make_engine(llama_dir, {}, enable_lora=True, max_loras=2, max_cpu_loras=2, lora_async_loads=async_loads)
    load = engine.core.control
    for name in ("r4-all", "r8-mlp", "r2-qv"):  # the third evicts r4-all from host memory
        load("load_lora_adapter", {"lora_name": name, "lora_path": str(adapters[name])})
    lora = engine.core.lora
    assert lora is not None and "r4-all" not in lora.cache.host
    prompt = [7, 8, 9, 10]
    engine.add_request("evicted", prompt, GREEDY, adapter_id="r4-all")  # first in line
    engine.add_request("held", prompt, GREEDY, adapter_id="r8-mlp")
    first = {out.request_id for out in engine.step()}
    # the loader reads r4-all while held's prefill runs; without it the step read it and ran both
    assert first == ({"held"} if async_loads else {"evicted", "held"})
    tokens: dict[str, list[int]] = {}
    while engine.has_unfinished():
        for out in engine.step():
            if out.finished:
                tokens[out.request_id] = out.outputs[0].token_ids
    assert tokens["evicted"] == peft_ref.greedy(adapters["r4-all"], prompt, MAX_TOKENS)
    assert tokens["held"] == peft_ref.greedy(adapters["r8-mlp"], prompt, MAX_TOKENS)
    assert (lora.async_reads, lora.loading) == (int(async_loads), False)
    loader = lora._loader
    assert (loader is not None) == async_loads
    engine.close()  # the loader thread is stopped, not left for the garbage collector
    assert lora._loader is None and (loader is None or loader._shutdown)


def test_unload_refuses_while_requests_use_the_adapter(llama_dir: Path, adapters: dict[str, Path]) -> None:
    engine = make_engine(llama_dir, {"a": adapters["r2-qv"]})
    engine.add_request("r", [3, 4, 5], GREEDY, adapter_id="a")
    with pytest.raises(InvalidRequestError, match="in use by 1 request"):
        engine.core.control("unload_lora_adapter", {"lora_name": "a"})
    while engine.has_unfinished():
        engine.step()
    engine.core.control("unload_lora_adapter", {"lora_name": "a"})


def test_export_and_import_between_engines(llama_dir: Path, adapters: dict[str, Path], peft_ref: PeftReference) -> None:
    source = make_engine(llama_dir, {"a": adapters["r8-mlp"]})
    target = make_engine(llama_dir, {}, enable_lora=True)
    target.core.control("import_lora_adapter", source.core.control("export_lora_adapter", {"lora_name": "a"}))
    prompt = [7, 8, 9, 10]
    assert run(target, [("a", prompt)])["r0"] == peft_ref.greedy(adapters["r8-mlp"], prompt, MAX_TOKENS)


def shm_files() -> set[str]:
    from edgecloud.llm.lora.transfer import SHM_DIR, SHM_PREFIX

    return {p.name for p in SHM_DIR.glob(SHM_PREFIX + "*")}


def test_import_through_shared_memory_equals_peft_and_leaves_no_file(
    llama_dir: Path, adapters: dict[str, Path], peft_ref: PeftReference
) -> None:
    import asyncio

    from edgecloud.llm.lora.transfer import fetch_adapter

    before = shm_files()
    source = make_engine(llama_dir, {"a": adapters["r4-all"]})
    target = make_engine(llama_dir, {}, enable_lora=True)
    exported = source.core.control("export_lora_adapter", {"lora_name": "a", "transport": "shm"})
    assert "tensors" not in exported and exported["shm"]["name"] in shm_files()
    target.core.control("import_lora_adapter", exported)
    assert shm_files() == before  # the importer removed the name; its tensors map the memory

    class Core:  # fetch_adapter's side: an async control(op, **args), as AsyncEngine's
        def __init__(self, engine: LLMEngine) -> None:
            self.engine = engine

        async def control(self, op: str, **args: object) -> object:
            return self.engine.core.control(op, args)

    asyncio.run(fetch_adapter(Core(source), Core(target), "a", "b"))
    with pytest.raises(InvalidRequestError, match="already loaded"):  # a failed import leaves no file either
        asyncio.run(fetch_adapter(Core(source), Core(target), "a", "b"))
    assert shm_files() == before
    prompt = [7, 8, 9, 10]
    expected = peft_ref.greedy(adapters["r4-all"], prompt, MAX_TOKENS)
    assert run(target, [("a", prompt), ("b", prompt)]) == {"r0": expected, "r1": expected}


def test_bad_shared_memory_handles_are_clear_errors(llama_dir: Path, adapters: dict[str, Path]) -> None:
    source = make_engine(llama_dir, {"a": adapters["r2-qv"]})
    target = make_engine(llama_dir, {}, enable_lora=True)
    exported = source.core.control("export_lora_adapter", {"lora_name": "a", "transport": "shm"})
    name = exported["shm"]["name"]
    imp = target.core.control
    with pytest.raises(InvalidRequestError, match="not a name this engine creates"):
        imp("import_lora_adapter", {**exported, "shm": {**exported["shm"], "name": "../etc/passwd"}})
    grown = [[k, d, [s[0] * 1000, *s[1:]], o] for k, d, s, o in exported["shm"]["layout"]]
    with pytest.raises(InvalidRequestError, match="lies outside the"):
        imp("import_lora_adapter", {**exported, "shm": {**exported["shm"], "layout": grown}})
    assert name not in shm_files()  # consumed by the failed import
    with pytest.raises(InvalidRequestError, match="does not exist"):
        imp("import_lora_adapter", exported)
    with pytest.raises(InvalidRequestError, match="transport must be one of"):
        source.core.control("export_lora_adapter", {"lora_name": "a", "transport": "rdma"})
    assert run(target, [(None, [3, 4, 5])]).keys() == {"r0"}  # still serving


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 3e38])
def test_non_finite_weights_are_refused_and_large_finite_ones_kept(
    llama_dir: Path, adapters: dict[str, Path], value: float
) -> None:
    source = make_engine(llama_dir, {"a": adapters["r2-qv"]})
    target = make_engine(llama_dir, {}, enable_lora=True)
    exported = source.core.control("export_lora_adapter", {"lora_name": "a"})
    tensors = {k: v.clone() for k, v in exported["tensors"].items()}
    key = sorted(tensors)[0]
    tensors[key].view(-1)[: 4] = value  # large but finite: kept
    args = {**exported, "tensors": tensors}
    if value == 3e38:
        target.core.control("import_lora_adapter", args)
        return
    with pytest.raises(InvalidRequestError, match="NaN or infinite"):
        target.core.control("import_lora_adapter", args)


def test_lora_disabled_refuses_adapters(llama_dir: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", kv_cache_memory_mb=1))
    with pytest.raises(InvalidRequestError, match="LoRA is not enabled"):
        engine.core.control("load_lora_adapter", {"lora_name": "a", "lora_path": "/x"})
    with pytest.raises(InvalidRequestError, match="unknown LoRA adapter"):
        engine.add_request("r", [3, 4], GREEDY, adapter_id="a")
