"""OmniAttn in the engine: a layer pattern with every layer full (or a window wider than the
context) gives the greedy output of full KV; compressed layers decode exactly as transformers does
with per-layer sink + window masks, over less memory; the quality evaluator predicts what the
engine generates; PAT's prefix backend runs on the full layers; a P/D hand-over sends only the
sink and window of compressed layers and the receiver continues as the masks say; bad pattern
files are refused with the field named; the search writes a file that the engine serves."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from edgecloud.llm import LLM, SamplingParams
from edgecloud.llm.attention.sink_window import sink_window_mask
from edgecloud.llm.errors import InvalidRequestError
from edgecloud.llm.omniattn.evaluate import load_evaluator
from edgecloud.llm.omniattn.pattern import LayerPattern
from edgecloud.llm.random_model import write_random_model
from edgecloud.llm.request import KVTransferParams

BS = 4
GREEDY = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
COMPRESSED = {1, 3}


@pytest.fixture(scope="module")
def model4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("omniattn") / "llama4", num_hidden_layers=4)


def pattern_file(tmp_path: Path, compressed: set[int], sink: int = 1, window: int = 2, name: str = "p.json") -> str:
    path = tmp_path / name
    LayerPattern.compressing(4, compressed, sink_blocks=sink, window_blocks=window, block_size=BS).save(path)
    return str(path)


def llm(model: Path, **options: object) -> LLM:
    return LLM(model=str(model), dtype="float32", block_size=BS, kv_cache_memory_mb=2, **options)


def prompts() -> list[list[int]]:
    shared = list(range(40, 80))
    return [list(range(2, 40)), [*shared, 5, 6, 7], [*shared, 9, 10], list(range(100, 107))]


@functools.cache
def reference_model(model: Path) -> tuple[torch.nn.Module, dict[int, torch.Tensor]]:
    """transformers' model whose layer ``l`` attends where the returned dict's ``l`` allows."""
    from transformers import AutoModelForCausalLM

    net = AutoModelForCausalLM.from_pretrained(model, attn_implementation="eager").eval()
    masks: dict[int, torch.Tensor] = {}
    for i, layer in enumerate(net.model.layers):

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, i: int = i) -> tuple:
            kwargs["attention_mask"] = torch.where(masks[i], 0.0, float("-inf"))[None, None]
            return args, kwargs

        layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True)
    return net, masks


def masked_reference(model: Path, ids: list[int], masks: dict[int, torch.Tensor]) -> list[int]:
    """transformers' argmax at every position, layer ``l`` attending where ``masks[l]`` allows."""
    net, layer_masks = reference_model(model)
    layer_masks.clear()
    layer_masks.update(masks)
    with torch.no_grad():
        return net(torch.tensor([ids])).logits[0].argmax(-1).tolist()


def compressed_masks(
    length: int, num_prompt: int, hole: tuple[int, int] | None = None, computed_from: int = 0
) -> dict[int, torch.Tensor]:
    """Full layers causal; compressed ones as the engine's runner: prompt rows see every held key
    (``hole``: key positions a prefix hit did not bring, missing for rows from ``computed_from``),
    later rows their sink and window."""
    pos = torch.arange(length)
    causal = pos[None, :] <= pos[:, None]
    compressed = sink_window_mask(pos, pos, num_prompt, 1, 2, BS)
    if hole is not None:
        lost = (pos[None, :] >= hole[0]) & (pos[None, :] < hole[1]) & (pos[:, None] >= computed_from)
        compressed &= ~lost
    return {layer: compressed if layer in COMPRESSED else causal for layer in range(4)}


def test_every_layer_full_or_a_window_wider_than_the_context_gives_full_kv_output(model4: Path, tmp_path: Path) -> None:
    base = [o.outputs[0].token_ids for o in llm(model4).generate(prompts(), GREEDY)]
    for path in (pattern_file(tmp_path, set(), name="full.json"), pattern_file(tmp_path, COMPRESSED, window=100)):
        # chunked prefill and prefix hits (the shared prompts) included
        engine = llm(model4, kv_layer_pattern=path, max_num_batched_tokens=16)
        assert [o.outputs[0].token_ids for o in engine.generate(prompts(), GREEDY)] == base
        assert engine.engine.kv.num_free_blocks == engine.engine.kv.num_blocks


def test_compressed_layers_decode_as_transformers_with_sink_and_window_masks(model4: Path, tmp_path: Path) -> None:
    engine = llm(model4, kv_layer_pattern=pattern_file(tmp_path, COMPRESSED))
    outs = engine.generate(prompts(), GREEDY)
    for prompt, out in zip(prompts(), outs, strict=True):
        got = out.outputs[0].token_ids
        ids = prompt + got[:-1]
        want = masked_reference(model4, ids, compressed_masks(len(ids), len(prompt)))[len(prompt) - 1 :]
        assert got == want
    full = [o.outputs[0].token_ids for o in llm(model4).generate(prompts(), GREEDY)]
    assert [o.outputs[0].token_ids for o in outs] != full  # the masks matter here
    kv = engine.engine.kv
    assert kv.pools[0].num_blocks > kv.pools[1].num_blocks  # compressed layers get a smaller pool


def test_a_decoding_request_holds_sink_and_window_blocks_on_compressed_layers(model4: Path, tmp_path: Path) -> None:
    engine = llm(model4, kv_layer_pattern=pattern_file(tmp_path, COMPRESSED)).engine
    engine.add_request("r", list(range(2, 60)), SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))
    for _ in range(4):
        engine.step()
    req = engine.core.scheduler.requests["r"]
    full, compressed = req.block_tables
    assert len([b for b in compressed if b >= 0]) == 3 and len(full) == len(compressed) == 16
    assert all(b >= 0 for b in full)


def test_the_evaluator_predicts_the_engines_greedy_tokens(model4: Path, tmp_path: Path) -> None:
    path = pattern_file(tmp_path, COMPRESSED)
    got = llm(model4, kv_layer_pattern=path).generate([prompts()[0]], GREEDY)[0].outputs[0].token_ids
    evaluator, _, _ = load_evaluator(str(model4), BS, dtype="float32")
    seq = evaluator.prefill(prompts()[0], len(prompts()[0]), scratch=GREEDY.max_tokens)
    assert evaluator.greedy(seq, LayerPattern.load(path), GREEDY.max_tokens) == got
    teacher = evaluator.prefill(prompts()[0] + got, len(prompts()[0]), scratch=GREEDY.max_tokens)
    assert evaluator.continuation_logprobs(teacher, LayerPattern.load(path)).shape == (GREEDY.max_tokens - 1,)


def test_pats_prefix_backend_serves_the_full_layers(model4: Path, tmp_path: Path) -> None:
    path = pattern_file(tmp_path, COMPRESSED)
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, n=3)
    paged = llm(model4, kv_layer_pattern=path).generate(prompts()[1:3], params)
    prefix = llm(model4, kv_layer_pattern=path, attention_backend="prefix").generate(prompts()[1:3], params)
    assert [[c.token_ids for c in o.outputs] for o in prefix] == [[c.token_ids for c in o.outputs] for o in paged]


def test_a_pd_hand_over_sends_only_the_sink_and_window_of_compressed_layers(model4: Path, tmp_path: Path) -> None:
    path = pattern_file(tmp_path, COMPRESSED)
    prompt = list(range(2, 43))  # 10 full blocks and one token
    prefill = llm(model4, kv_layer_pattern=path).engine
    prefill.add_request("p", prompt, SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True),
                        kv_transfer=KVTransferParams(export=True))
    while prefill.has_unfinished():
        outs = prefill.step()
    keys = outs[0].kv_block_keys
    assert keys is not None and len(keys) == 10
    exported = prefill.core.control("export_blocks", {"keys": keys, "unpin": True})
    # full layers (0, 2) of every block; compressed layers (1, 3) of the sink and the last 3 blocks
    assert exported["layers"] == [[0, 1, 2, 3] if i in (0, 7, 8, 9) else [0, 2] for i in range(10)]
    assert exported["k"].shape[0] == 10 * 2 + 4 * 2
    decode = llm(model4, kv_layer_pattern=path).engine
    assert decode.core.control("import_blocks", exported) == 10
    decode.add_request("d", prompt, GREEDY)
    while decode.has_unfinished():
        outs = decode.step()
    assert outs[0].num_cached_tokens == 40
    got = outs[0].outputs[0].token_ids
    ids = prompt + got[:-1]
    # the decode side's last prompt token sees, on compressed layers, the sink, the blocks that came
    # (7, 8, 9) and itself: blocks 1-6 never came
    want = masked_reference(model4, ids, compressed_masks(len(ids), len(prompt), (BS, 7 * BS), 10 * BS))
    assert got == want[len(prompt) - 1 :]
    # a receiver with every layer full cannot use the compressed layers' missing blocks: it imports
    # only the blocks that bring every layer... none here but the sink, so the chain stops at once
    full = llm(model4).engine
    assert full.core.control("import_blocks", exported) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"format": "edgecloud-kv-layer-pattern/1", "block_size": 4, "sink_blocks": 1, "window_blocks": 2, '
         '"layers": ["full", "full"]}', "names 2 layers but the model has 4"),
        ('{"format": "edgecloud-kv-layer-pattern/1", "block_size": 16, "sink_blocks": 1, "window_blocks": 2, '
         '"layers": ["full", "full", "full", "full"]}', "blocks of 16 tokens but block_size is 4"),
        ('{"format": "edgecloud-kv-layer-pattern/1", "block_size": 4, "sink_blocks": 1, "window_blocks": 0, '
         '"layers": ["full", "full", "full", "full"]}', "window_blocks must be >= 1"),
        ('{"format": "edgecloud-kv-layer-pattern/1", "block_size": 4, "sink_blocks": 1, "window_blocks": 2, '
         '"layers": ["full", "sparse", "full", "full"]}', "layers\\[1\\] must be one of full, sink_window"),
        ("[1, 2]", "a KV layer pattern is a JSON object"),
        ("{", "not valid JSON"),
    ],
)
def test_a_bad_pattern_file_is_refused_naming_the_field(
    model4: Path, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InvalidRequestError, match=message) as error:
        llm(model4, kv_layer_pattern=str(path))
    assert error.value.param == "kv_layer_pattern"
    with pytest.raises(InvalidRequestError, match="does not exist"):
        llm(model4, kv_layer_pattern=str(tmp_path / "missing.json"))


def test_the_search_writes_a_pattern_within_budget_that_the_engine_serves(model4: Path, tmp_path: Path) -> None:
    from edgecloud.llm.omniattn.search import search_pattern

    pattern = search_pattern(str(model4), 0.6, "genetic", context=512, calibration_context=256,
                             calibration_rows=16, sink_blocks=1, window_blocks=2, block_size=BS, population=4,
                             generations=1)
    assert len(pattern.compressed) == 2 and pattern.kv_fraction(512) <= 0.6
    cost = pattern.info["search"]["cost"]
    assert cost["patterns_evaluated"] >= 4 and cost["search_tokens"] > 0
    assert set(pattern.info["search"]["layer_scores"]) <= {str(i) for i in range(4)}
    assert pattern.info["search"]["layer_scores"]  # the genetic search's per-layer table
    path = tmp_path / "found.json"
    pattern.save(path)
    out = llm(model4, kv_layer_pattern=str(path)).generate([prompts()[0]], GREEDY)[0].outputs[0]
    assert len(out.token_ids) == GREEDY.max_tokens


def test_the_searches_find_the_least_harmful_layers_of_a_known_loss() -> None:
    from edgecloud.llm.omniattn.search import genetic_search, greedy_search

    harm = [5.0, 0.1, 3.0, 0.2, 4.0, 0.3, 2.0, 1.0]  # compressing layer i costs harm[i]; best 3: {1, 3, 5}
    calls: list[frozenset[int]] = []

    def loss(layers: frozenset[int]) -> float:
        calls.append(layers)
        return sum(harm[i] for i in layers) + 2.0 * (layers == frozenset({1, 3, 5}))  # an interaction greedy misses

    greedy = greedy_search(8, 3, loss)
    assert greedy.compressed == frozenset({1, 3, 5}) and greedy.loss == pytest.approx(2.6)
    assert greedy.evaluations == len(calls) == 9
    assert greedy.layer_scores == pytest.approx(dict(enumerate(harm)))  # each layer's loss compressed alone
    calls.clear()
    genetic = genetic_search(8, 3, loss, population=8, generations=6, seed=0)
    assert genetic.compressed == frozenset({1, 3, 7}) and genetic.loss == pytest.approx(1.3)
    assert genetic.evaluations == len(set(calls)) == len(calls) < 56  # no pattern is scored twice
    assert [h["best_loss"] for h in genetic.history] == sorted((h["best_loss"] for h in genetic.history), reverse=True)


def test_bench_omniattn_compares_methods_at_the_same_budget_on_the_same_inputs(model4: Path, tmp_path: Path) -> None:
    import json

    from edgecloud.cli import main

    path = pattern_file(tmp_path, COMPRESSED)
    out = tmp_path / "bench.json"
    assert main(["bench", "omniattn", "--pattern", path, "--model", str(model4), "--contexts", "128", "320",
                 "--rows", "16", "--needle-contexts", "320", "--depths", "0.5", "--random-seeds", "0",
                 "--steps", "4", "--threads", "1", "--kv-cache-memory-mb", "2", "--json", str(out),
                 "--plot", str(tmp_path / "bench.png")]) == 0
    cases = {(c["method"], c["context"]): c for c in json.loads(out.read_text())["cases"]}
    assert set(cases) == {(m, c) for m in ("full", "omniattn", "streaming", "random") for c in (128, 320)}
    pattern = LayerPattern.load(path)
    for (method, context), case in cases.items():
        assert case["ppl"] > 1 and (context != 320 or 0 <= case["needle_acc"] <= 1)
        want = {"full": 1.0, "streaming": None}.get(method, round(pattern.kv_fraction(context), 4))
        if want is not None:
            assert case["kv_fraction"] == want
        else:  # every layer compressed, its window widened to the same KV (within a block)
            assert abs(case["kv_fraction"] - pattern.kv_fraction(context)) <= BS / context
    for context in (128, 320):
        full, omni, streaming = (cases[(m, context)] for m in ("full", "omniattn", "streaming"))
        assert "ppl_ratio" not in full
        low, high = omni["ppl_ratio_ci95"]
        assert low <= omni["ppl_ratio"] <= high and omni["ppl_ratio"] == pytest.approx(omni["ppl"] / full["ppl"],
                                                                                        rel=1e-3)
        assert full["step_ms"] > 0 and omni["step_ms"] > 0
        # the KV really held while decoding: every block on full layers, sink + window on compressed ones
        assert omni["held_blocks"] == [full["held_blocks"][0], 3]
        assert omni["kv_bytes_per_token"] < full["kv_bytes_per_token"]
        assert streaming["held_blocks"] == [round(pattern.kv_fraction(context) * context / BS)]
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_the_perplexity_ratio_is_paired_on_the_same_tokens() -> None:
    import math

    import torch

    from edgecloud.llm.omniattn.bench import ppl_ratio

    full = torch.rand(256, generator=torch.Generator().manual_seed(0)) * 5
    assert ppl_ratio(full, full) == (1.0, 1.0, 1.0)
    shifted = ppl_ratio(full + 0.01, full)  # every token 0.01 nats worse: no spread, whatever full's spread
    assert shifted == pytest.approx((math.exp(0.01),) * 3)
    noisy = full + torch.randn(256, generator=torch.Generator().manual_seed(1)) * 0.1
    ratio, low, high = ppl_ratio(noisy, full)
    assert low < ratio < high and low < 1 < high


def test_bench_omniattn_merges_parts_measured_in_separate_runs(tmp_path: Path) -> None:
    """Perplexity, needles and speed run as separate (resumable) runs and merged: every field any
    run measured lands in its case, a field one run left unmeasured (None) hides nothing, and a
    run of another pattern is refused."""
    import json

    from edgecloud.cli import main

    path = pattern_file(tmp_path, COMPRESSED)
    pattern = LayerPattern.load(path)
    head = {"pattern": {"layers": pattern.describe(), "sink_blocks": 1, "window_blocks": 2, "block_size": BS},
            "threads": 1, "speed_kv": "random", "machine_load": {}}

    def case(method: str, context: int, **fields: object) -> dict:
        return {"method": method, "seed": None, "context": context, "kv_fraction": 1.0, "ppl": None,
                "needle_acc": None, "step_ms": None, **fields}

    def needle(depth: float, correct: bool) -> dict:
        return {"depth": depth, "key": str(int(depth * 100)), "answer": "", "correct": correct}

    runs = {
        "ppl.json": {"parts": ["quality"], "inputs": {"perplexity_files": ["a.py"], "tokens_through_model": 10},
                     "cases": [case("full", 128, ppl=3.5), case("omniattn", 128, ppl=3.6)]},
        "needle.json": {"parts": ["quality"], "inputs": {"needle_depths": [0.5], "tokens_through_model": 5},
                        "cases": [case("full", 128, needle_acc=1.0, needle=[needle(0.5, True)]),
                                  case("full", 64, needle_acc=0.0, needle=[needle(0.5, False)])]},
        "needle2.json": {"parts": ["quality"], "inputs": {"needle_depths": [0.25, 0.75]},
                         "cases": [case("full", 128, needle_acc=0.5,
                                        needle=[needle(0.25, False), needle(0.75, True)])]},
        "speed.json": {"parts": ["speed"], "inputs": {},
                       "cases": [case("full", 128, step_ms=7.0, kv_bytes_per_token=10.0)]},
    }
    for name, run in runs.items():
        (tmp_path / name).write_text(json.dumps({**head, **run}))
    out = tmp_path / "merged.json"
    assert main(["bench", "omniattn", "--pattern", path, "--parts", "none", "--merge",
                 *(str(tmp_path / name) for name in runs), "--json", str(out)]) == 0
    merged = json.loads(out.read_text())
    cases = {(c["method"], c["context"]): c for c in merged["cases"]}
    assert set(cases) == {("full", 128), ("omniattn", 128), ("full", 64)}
    full = cases[("full", 128)]
    # needles of one case from two runs are pooled: 2 of 3 correct
    assert (full["ppl"], full["needle_acc"], full["step_ms"], full["kv_bytes_per_token"]) == (3.5, 0.6667, 7.0, 10.0)
    assert [n["depth"] for n in full["needle"]] == [0.5, 0.25, 0.75]
    assert cases[("omniattn", 128)]["ppl"] == 3.6 and cases[("full", 64)]["needle_acc"] == 0.0
    assert merged["parts"] == ["quality", "speed"] and merged["inputs"]["tokens_through_model"] == 15
    assert [run["file"] for run in merged["runs"]] == [str(tmp_path / name) for name in runs]

    other = tmp_path / "other.json"
    LayerPattern.compressing(4, {0}, sink_blocks=1, window_blocks=2, block_size=BS).save(other)
    with pytest.raises(SystemExit, match="pattern"):
        main(["bench", "omniattn", "--pattern", str(other), "--parts", "none", "--merge", str(tmp_path / "ppl.json")])
