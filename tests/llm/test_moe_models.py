"""MoE models in the engine equal transformers (float32): Mixtral, Qwen2-MoE, Qwen3-MoE and the
DeepSeek-V3 layout (grouped routing with its bias, shared experts, first dense layer, latent
attention), under any placement of their experts and across a live rebalance; routing counters equal
an independent count from transformers' own routers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from edgecloud.llm import LLM, SamplingParams
from edgecloud.llm.config import ModelConfig
from edgecloud.llm.errors import InvalidRequestError, ModelLoadError
from edgecloud.llm.moe import Placement, align, omni_placement
from edgecloud.llm.moe.parallel import ExpertParallelRanks, attach
from edgecloud.llm.outputs import RequestOutput
from edgecloud.llm.random_model import write_random_model

from .conftest import HFReference
from .test_engine_vs_transformers import assert_matches, random_prompts

ARCHS = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v3")
GREEDY = SamplingParams(temperature=0.0, max_tokens=8, logprobs=0, ignore_eos=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """MoE steps are many small operations: with two threads on a busy 2-core machine the threads'
    barriers cost 10-30x (measured 17.5 s against 0.5 s for the same generation at load 18)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def moe_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("moe")
    return {arch: write_random_model(root / arch, arch=arch) for arch in ARCHS}


@pytest.fixture(scope="module")
def moe_refs(moe_dirs: dict[str, Path]) -> dict[str, HFReference]:
    return {arch: HFReference(path) for arch, path in moe_dirs.items()}


def random_placement(rng: np.random.Generator, layers: int, experts: int, slots: int) -> Placement:
    """Every expert once in a random slot, the other slots random replicas (all on one rank)."""
    rows = [np.concatenate([rng.permutation(experts), rng.integers(0, experts, slots - experts)])
            for _ in range(layers)]
    return Placement(np.stack(rows), 1, experts)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_tokens_and_logprobs_equal_transformers(
    arch: str, moe_dirs: dict[str, Path], moe_refs: dict[str, HFReference]
) -> None:
    llm = LLM(model=str(moe_dirs[arch]), dtype="float32", block_size=4, kv_cache_memory_mb=2)
    assert_matches(llm, moe_refs[arch], random_prompts(4, 1, 30, seed=11))
    # Under a placement that moves every expert and replicates some (tokens split between replicas).
    runtime = llm.engine.core.executor.moe
    moe = llm.engine.model_config.moe
    placement = random_placement(np.random.default_rng(3), len(moe.layers), moe.num_experts, moe.num_experts + 5)
    assert runtime.apply(placement, live=False) == len(moe.layers)
    assert runtime.placement == placement
    assert_matches(llm, moe_refs[arch], random_prompts(3, 5, 25, seed=12))


def test_latent_attention_reads_its_compressed_cache_back(
    moe_dirs: dict[str, Path], moe_refs: dict[str, HFReference]
) -> None:
    # Chunked prefill and prefix hits make prefill attend to latents read back from the paged cache.
    llm = LLM(model=str(moe_dirs["deepseek_v3"]), dtype="float32", block_size=4, kv_cache_memory_mb=2,
              max_num_batched_tokens=9)
    system = random_prompts(1, 20, 20, seed=13)[0]
    prompts = [system + tail for tail in random_prompts(3, 3, 9, seed=14)]
    assert_matches(llm, moe_refs["deepseek_v3"], prompts[:1])
    assert_matches(llm, moe_refs["deepseek_v3"], prompts[1:])
    assert llm.engine.stats().prefix_cache_hits >= 2 * 20
    # The cache holds kv_lora_rank + qk_rope_head_dim values a token and layer, not 2 x heads x dims.
    latent, rope = llm.engine.core.executor.kv_caches[0]
    assert latent.shape[2:] == (1, 32) and rope.shape[2:] == (1, 8)


def decode_across_a_live_rebalance(llm: LLM, prompts: list[list[int]], slots_per_rank: int,
                                   seed: int) -> list[RequestOutput]:
    """Decodes ``prompts`` greedily, 10 tokens each, all at once, while every MoE layer moves to a new
    placement (from a heavy-tailed load, same slots per rank), one layer per step."""
    engine = llm.engine
    runtime = engine.core.executor.moe
    moe = engine.model_config.moe
    ranks = runtime.world_size
    rng = np.random.default_rng(seed)
    params = SamplingParams(temperature=0.0, max_tokens=10, logprobs=0, ignore_eos=True)
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    outputs = {}
    second = None
    for step in range(40):
        for out in engine.step():
            outputs[out.request_id] = out
        if step == 3:  # requests are decoding: move every layer, one per step, while they run
            load = rng.pareto(1.0, size=(len(moe.layers), moe.num_experts))
            second = align(omni_placement(load, ranks, slots_per_rank), runtime.placement)
            assert runtime.apply(second, live=True) == len(moe.layers)
            assert runtime.pending
        if not engine.has_unfinished():
            break
    assert runtime.placement == second and not runtime.pending
    assert runtime.migrated_bytes > 0
    return [outputs[str(i)] for i in range(len(prompts))]


def run_with_live_rebalance(llm: LLM, ref: HFReference, slots_per_rank: int, seed: int) -> None:
    """Three requests decode across a live rebalance of every layer; their greedy tokens and
    logprobs still equal transformers'."""
    prompts = random_prompts(3, 4, 20, seed=seed)
    for prompt, out in zip(prompts, decode_across_a_live_rebalance(llm, prompts, slots_per_rank, seed), strict=True):
        want_ids, want_lp = ref.greedy(prompt, 10)
        got = out.outputs[0]
        assert got.token_ids == want_ids
        assert max(abs(lp.logprob - w) for lp, w in zip(got.logprobs, want_lp, strict=True)) < 1e-4


def test_live_rebalance_in_the_middle_of_generation(
    moe_dirs: dict[str, Path], moe_refs: dict[str, HFReference]
) -> None:
    llm = LLM(model=str(moe_dirs["qwen2_moe"]), dtype="float32", block_size=4, kv_cache_memory_mb=2)
    runtime = llm.engine.core.executor.moe
    moe = llm.engine.model_config.moe
    first = random_placement(np.random.default_rng(4), len(moe.layers), moe.num_experts, moe.num_experts + 3)
    runtime.apply(first, live=False)
    run_with_live_rebalance(llm, moe_refs["qwen2_moe"], moe.num_experts + 3, seed=15)


def test_expert_parallel_ranks_equal_transformers(
    moe_dirs: dict[str, Path], moe_refs: dict[str, HFReference]
) -> None:
    """Experts over 2 processes (gloo), one redundant slot per rank, then a live rebalance across the
    ranks: outputs equal transformers' and the counters see every rank's tokens."""
    threads = torch.get_num_threads()
    llm = LLM(model=str(moe_dirs["deepseek_v3"]), dtype="float32", block_size=4, kv_cache_memory_mb=2)
    moe = llm.engine.model_config.moe
    load = np.random.default_rng(7).pareto(1.0, size=(len(moe.layers), moe.num_experts))
    placement = omni_placement(load, 2, moe.num_experts // 2 + 1)
    executor = attach(llm.engine.core, world_size=2, placement=placement)
    try:
        runtime = executor.moe
        assert runtime.placement == placement and runtime.world_size == 2
        # Rank 0 holds only its own slots' weights.
        experts = llm.engine.core.executor.runner.model.model.layers[1].mlp.experts
        assert experts.w13.shape[0] == placement.slots_per_rank
        prompts = random_prompts(3, 3, 25, seed=17)
        assert_matches(llm, moe_refs["deepseek_v3"], prompts)
        load_now = llm.engine.core.control("expert_load", {"reset": True})
        assert np.array(load_now["rank_tokens"]).shape == (len(moe.layers), 2)
        assert (np.array(load_now["rank_tokens"]) > 0).all()
        run_with_live_rebalance(llm, moe_refs["deepseek_v3"], placement.slots_per_rank, seed=18)
    finally:
        executor.shutdown()
        torch.set_num_threads(threads)
    assert all(not p.is_alive() for p in executor.processes)


def _independent_counts(model_dir: Path, arch: str, sequences: list[list[int]]) -> np.ndarray:
    """Top-k choices per MoE layer and expert, from transformers: Mixtral's and Qwen's router logits
    (``output_router_logits``) ranked by softmax; DeepSeek-V3's own router module's choices."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = model.config
    moe_layers = [i for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "gate")]
    experts = (getattr(config, "n_routed_experts", None) or getattr(config, "num_local_experts", None)
               or config.num_experts)
    counts = np.zeros((len(moe_layers), experts), dtype=np.int64)
    chosen: list[torch.Tensor] = []
    hooks = []
    if arch == "deepseek_v3":
        hooks = [model.model.layers[i].mlp.gate.register_forward_hook(lambda m, a, out: chosen.append(out[2]))
                 for i in moe_layers]
    with torch.no_grad():
        for seq in sequences:
            chosen.clear()
            out = model(torch.tensor([seq]), output_router_logits=arch != "deepseek_v3")
            picks = chosen if arch == "deepseek_v3" else [
                logits.softmax(-1).topk(config.num_experts_per_tok, dim=-1).indices for logits in out.router_logits]
            for row, ids in enumerate(picks):
                counts[row] += np.bincount(ids.flatten().numpy(), minlength=experts)
    for hook in hooks:
        hook.remove()
    return counts


def test_routing_counters_equal_an_independent_count(moe_dirs: dict[str, Path]) -> None:
    """DeepSeek-V3's grouped routing with its bias, counted by transformers' own router module (the
    trained Mixtral's softmax routing is checked against ``output_router_logits`` below)."""
    arch = "deepseek_v3"
    llm = LLM(model=str(moe_dirs[arch]), dtype="float32", block_size=4, kv_cache_memory_mb=2)
    prompts = random_prompts(3, 3, 30, seed=16)
    outs = llm.generate(prompts, GREEDY)
    load = llm.engine.core.control("expert_load", {"reset": True})
    # Every position the engine computed: the prompt, then each generated token but the last.
    sequences = [p + o.outputs[0].token_ids[:-1] for p, o in zip(prompts, outs, strict=True)]
    assert np.array_equal(np.array(load["expert_counts"]), _independent_counts(moe_dirs[arch], arch, sequences))
    assert load["layers"] == list(llm.engine.model_config.moe.layers)
    assert np.array(load["rank_tokens"]).sum() == sum(len(s) for s in sequences) * 2 * len(load["layers"])
    assert not np.array(llm.engine.core.control("expert_load", {})["expert_counts"]).any()  # reset


def test_routing_counters_reach_the_stats_message_and_metrics(moe_dirs: dict[str, Path]) -> None:
    """The counters since start travel in every step's stats (through the core's msgpack message
    unchanged) and come out of /metrics as Prometheus counters; a reset of ``expert_load`` and a live
    migration do not make them go back, and the bytes the migration copied are counted."""
    from prometheus_client.parser import text_string_to_metric_families

    from edgecloud.llm.messages import Outputs, decode_from_core, encode
    from edgecloud.llm.outputs import EngineCoreOutputs
    from edgecloud.server.metrics import ServerMetrics

    arch = "qwen2_moe"
    llm = LLM(model=str(moe_dirs[arch]), dtype="float32", block_size=4, kv_cache_memory_mb=2)
    core = llm.engine.core
    prompts = random_prompts(2, 3, 20, seed=17)
    outs = llm.generate(prompts, GREEDY)
    first = np.array(core.control("expert_load", {"reset": True})["expert_counts"])
    assert first.sum() > 0
    layers = len(first)
    table = [np.roll(np.arange(first.shape[1]), 3).tolist()] * layers  # every expert moves
    assert core.control("expert_placement", {"slot_expert": table, "live": True}) == layers
    more = random_prompts(2, 3, 20, seed=18)
    outs += llm.generate(more, GREEDY)  # the migration happens while these run
    sequences = [p + o.outputs[0].token_ids[:-1] for p, o in zip(prompts + more, outs, strict=True)]
    want = _independent_counts(moe_dirs[arch], arch, sequences)
    message = decode_from_core(encode(Outputs(EngineCoreOutputs(stats=core.stats()))))
    stats = message.batch.stats  # type: ignore[union-attr]
    assert stats is not None and stats.moe is not None
    assert np.array_equal(np.array(stats.moe.expert_choices), want)
    assert np.array(stats.moe.rank_tokens).sum(axis=1).tolist() == want.sum(axis=1).tolist()
    assert stats.moe.migrated_bytes > 0 and stats.moe.layers == list(llm.engine.model_config.moe.layers)
    text = ServerMetrics(lambda: stats, "m").exposition().decode()
    series = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for family in text_string_to_metric_families(text) for s in family.samples}
    for row, layer in enumerate(stats.moe.layers):
        for expert in range(want.shape[1]):
            key = ("edgecloud_moe_expert_choices_total",
                   (("expert", str(expert)), ("layer", str(layer)), ("model_name", "m")))
            assert series[key] == want[row, expert]
        assert series["edgecloud_moe_rank_tokens_total", (("layer", str(layer)), ("model_name", "m"),
                                                          ("rank", "0"))] == want[row].sum()
    assert series["edgecloud_moe_migrated_bytes_total", (("model_name", "m"),)] == stats.moe.migrated_bytes


def assert_forward_matches(model: torch.nn.Module, prompts: list[list[int]], outs: list[RequestOutput]) -> None:
    """Each greedy token is the argmax of ``model``'s one forward pass over prompt + generated tokens,
    with the same logprob (for trained routing, see the test below)."""
    for prompt, out in zip(prompts, outs, strict=True):
        tokens = out.outputs[0].token_ids
        with torch.no_grad():
            logprobs = model(torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1].log_softmax(-1)
        assert logprobs.argmax(-1).tolist() == tokens
        want = logprobs[torch.arange(len(tokens)), torch.tensor(tokens)]
        got = torch.tensor([lp.logprob for lp in out.outputs[0].logprobs])
        assert (got - want).abs().max() < 1e-4


@pytest.fixture(scope="module")
def trained() -> tuple[Path, torch.nn.Module, list[str]]:
    """The shipped trained Mixtral, transformers' float32 copy of it, and held-out prose."""
    from transformers import AutoModelForCausalLM

    from edgecloud.llm.moe.bench import ASSET

    held = json.loads((ASSET / "heldout.json").read_text())
    return ASSET, AutoModelForCausalLM.from_pretrained(ASSET, dtype=torch.float32).eval(), held["prose"]


def test_trained_moe_equals_transformers_and_counts_alike(trained: tuple[Path, torch.nn.Module, list[str]]) -> None:
    """The shipped trained Mixtral (bfloat16 on disk; the engine and transformers both in float32) on
    held-out prose: each greedy token is transformers' argmax over the same sequence, with the same
    logprob, and the routing counters equal transformers' router logits.

    The reference is one forward pass over prompt + generated tokens, not transformers' ``generate``:
    trained routing has near ties (2nd and 3rd expert probabilities 1e-5 apart), which the few-ulp
    differences of a decode step with a cache can flip in ``generate`` itself (measured: its logprobs
    differ from its own full forward pass by 0.02, ours from that pass by 0)."""
    asset, model, prose = trained
    llm = LLM(model=str(asset), dtype="float32", kv_cache_memory_mb=8)
    prompts = [llm.tokenizer.encode(text)[:40] for text in prose[:4]]
    outs = llm.generate(prompts, GREEDY)
    assert_forward_matches(model, prompts, outs)
    load = llm.engine.core.control("expert_load", {})
    sequences = [p + o.outputs[0].token_ids[:-1] for p, o in zip(prompts, outs, strict=True)]
    counts = np.array(load["expert_counts"])
    assert np.array_equal(counts, _independent_counts(asset, "mixtral", sequences))
    assert counts.sum(axis=1).tolist() == [2 * sum(map(len, sequences))] * len(load["layers"])


@pytest.fixture(scope="module")
def ep4() -> Iterator[ExpertParallelRanks]:
    """EP ranks 1..3, started once for every EP=4 test of this module (each start costs seconds)."""
    ranks = ExpertParallelRanks(4, threads=1, timeout_s=300)
    yield ranks
    ranks.close()
    assert all(not p.is_alive() for p in ranks.processes)


def attach_ep4(llm: LLM, ranks: ExpertParallelRanks, seed: int) -> Placement:
    """The engine's experts over 4 processes under OmniPlacement from a heavy-tailed load, one spare
    slot per rank (replicas, some on one rank); checks that each rank holds only its slots."""
    moe = llm.engine.model_config.moe
    load = np.random.default_rng(seed).pareto(1.0, size=(len(moe.layers), moe.num_experts))
    placement = omni_placement(load, 4, moe.num_experts // 4 + 1)
    assert (placement.replica_counts() > 1).any()
    executor = attach(llm.engine.core, world_size=4, placement=placement, ranks=ranks)
    assert executor.moe.placement == placement and executor.moe.world_size == 4
    experts = llm.engine.core.executor.runner.model.model.layers[moe.layers[0]].mlp.experts
    assert experts.w13.shape[0] == placement.slots_per_rank
    return placement


def every_rank_computed(llm: LLM) -> None:
    """The counters see the tokens of all 4 ranks (trained routing may leave a rank idle in a layer)."""
    load = llm.engine.core.control("expert_load", {"reset": True})
    assert np.array(load["rank_tokens"]).shape == (len(load["layers"]), 4)
    assert (np.array(load["rank_tokens"]).sum(axis=0) > 0).all()


@pytest.mark.parametrize("arch", ARCHS)
def test_expert_parallel_4_ranks_equal_transformers(
    arch: str, ep4: ExpertParallelRanks, moe_dirs: dict[str, Path], moe_refs: dict[str, HFReference]
) -> None:
    """EP = 4 (ranks 1..3 in other processes, reused from model to model): outputs equal transformers'
    under a placement with replicas, and across a live rebalance in the middle of generation."""
    llm = LLM(model=str(moe_dirs[arch]), dtype="float32", block_size=4, kv_cache_memory_mb=2)
    placement = attach_ep4(llm, ep4, seed=ARCHS.index(arch))
    try:
        assert_matches(llm, moe_refs[arch], random_prompts(3, 3, 25, seed=19))
        every_rank_computed(llm)
        run_with_live_rebalance(llm, moe_refs[arch], placement.slots_per_rank, seed=20)
    finally:
        llm.engine.core.executor.shutdown()
    assert not ep4.attached and all(p.is_alive() for p in ep4.processes)


def test_trained_moe_over_4_ranks_equals_transformers(
    ep4: ExpertParallelRanks, trained: tuple[Path, torch.nn.Module, list[str]]
) -> None:
    """The trained Mixtral (16 experts, skewed routing) at EP = 4: held-out prose under a placement
    with replicas, then across a live rebalance, each token and logprob as transformers' forward pass."""
    asset, model, prose = trained
    llm = LLM(model=str(asset), dtype="float32", kv_cache_memory_mb=8)
    placement = attach_ep4(llm, ep4, seed=21)
    try:
        prompts = [llm.tokenizer.encode(text)[:40] for text in prose[4:7]]
        assert_forward_matches(model, prompts, llm.generate(prompts, GREEDY))
        every_rank_computed(llm)
        prompts = [llm.tokenizer.encode(text)[:30] for text in prose[7:10]]
        outs = decode_across_a_live_rebalance(llm, prompts, placement.slots_per_rank, seed=22)
        assert_forward_matches(model, prompts, outs)
    finally:
        llm.engine.core.executor.shutdown()


def test_placement_control_rejects_bad_input(moe_dirs: dict[str, Path]) -> None:
    llm = LLM(model=str(moe_dirs["mixtral"]), dtype="float32", block_size=4, kv_cache_memory_mb=2)
    core = llm.engine.core
    missing = [[0, 1, 2, 3, 4, 5, 6, 6]] * 2  # expert 7 has no slot
    with pytest.raises(InvalidRequestError, match=r"experts \[7\] have no slot") as info:
        core.control("expert_placement", {"slot_expert": missing})
    assert info.value.param == "slot_expert"
    with pytest.raises(InvalidRequestError, match="2 MoE layers"):
        core.control("expert_placement", {"slot_expert": [list(range(8))]})
    wider = [[*range(8), 0]] * 2
    with pytest.raises(InvalidRequestError, match="live migration keeps"):
        core.control("expert_placement", {"slot_expert": wider, "live": True})
    assert core.control("expert_placement", {"slot_expert": wider, "live": False}) == 2
    dense = LLM(model=str(write_random_model(Path(llm.engine.model_dir).parent / "dense", arch="llama")),
                dtype="float32", kv_cache_memory_mb=1)
    with pytest.raises(InvalidRequestError, match="no mixture-of-experts layers"):
        dense.engine.core.control("expert_load", {})


def test_moe_config_errors_name_the_field() -> None:
    base = {"architectures": ["DeepseekV3ForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100, "n_routed_experts": 8,
            "num_experts_per_tok": 2, "moe_intermediate_size": 32, "n_group": 3, "topk_group": 1,
            "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 8, "v_head_dim": 8}
    with pytest.raises(ModelLoadError, match="n_group=3"):
        ModelConfig.from_dict(base)
    with pytest.raises(ModelLoadError, match="kv_lora_rank must be a positive integer"):
        ModelConfig.from_dict({**base, "n_group": 2, "kv_lora_rank": 0})
    with pytest.raises(ModelLoadError, match="missing required field 'num_experts_per_tok'"):
        ModelConfig.from_dict({**base, "n_group": 2, "num_experts_per_tok": None})
    config = ModelConfig.from_dict({**base, "n_group": 2, "first_k_dense_replace": 1})
    assert config.moe.layers == (1,) and config.moe.scoring == "sigmoid" and config.head_dim == 8
