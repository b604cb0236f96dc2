from pathlib import Path

import pytest
from tokenizers import Tokenizer

from edgecloud.bench.traces import TraceRequest
from edgecloud.bench.workload import (
    LengthScaling,
    PrefixTree,
    PromptVocab,
    random_workload,
    shared_prefix_workload,
    trace_workload,
)


@pytest.fixture(scope="module")
def vocab(tokenizer_dir: Path) -> PromptVocab:
    return PromptVocab.from_dir(tokenizer_dir)


def tokens(vocab: PromptVocab, text: str) -> list[int]:
    return vocab.tokenizer.encode(text, add_special_tokens=False).ids


def test_prompt_text_tokenizes_back_to_exactly_its_ids(vocab: PromptVocab) -> None:
    for request in random_workload(vocab, 20, input_len=50, output_len=8, range_ratio=0.9, seed=1):
        assert tokens(vocab, request.prompt) == list(request.prompt_ids)


def test_random_lengths_stay_in_range_and_are_seeded(vocab: PromptVocab) -> None:
    requests = random_workload(vocab, 200, input_len=100, output_len=10, range_ratio=0.5, seed=3)
    inputs = [len(r.prompt_ids) for r in requests]
    outputs = [r.output_len for r in requests]
    assert min(inputs) >= 50 and max(inputs) <= 150 and len(set(inputs)) > 20
    assert min(outputs) >= 5 and max(outputs) <= 15
    assert random_workload(vocab, 200, 100, 10, 0.5, seed=3) == requests
    assert [len(r.prompt_ids) for r in random_workload(vocab, 5, 7, 3)] == [7] * 5


def test_random_rejects_bad_ratio(vocab: PromptVocab) -> None:
    with pytest.raises(ValueError, match=r"range_ratio must be in \[0, 1\), got 1.5"):
        random_workload(vocab, 1, 10, 10, range_ratio=1.5)


def test_shared_prefix_tree_shares_exactly_system_and_template(vocab: PromptVocab) -> None:
    tree = PrefixTree(num_systems=2, system_len=12, templates_per_system=3, template_len=5,
                      requests_per_template=4, suffix_len=3, output_len=2)
    requests = shared_prefix_workload(vocab, tree, seed=0)
    assert len(requests) == tree.num_requests == 24
    assert all(len(r.prompt_ids) == 20 and r.output_len == 2 for r in requests)
    assert len({r.prompt_ids[:12] for r in requests}) == 2
    assert len({r.prompt_ids[:17] for r in requests}) == 6
    assert len({r.prompt_ids for r in requests}) == 24
    for request in requests:
        assert tokens(vocab, request.prompt) == list(request.prompt_ids)
    with pytest.raises(ValueError, match="suffix_len must be >= 1, got 0"):
        PrefixTree(suffix_len=0)


def test_trace_lengths_are_scaled_and_capped(vocab: PromptVocab) -> None:
    trace = [TraceRequest(0.0, 1000, 200), TraceRequest(1.5, 3, 1), TraceRequest(2.0, 5000, 999)]
    scaling = LengthScaling(input_scale=0.1, output_scale=0.05, max_input_len=300, max_output_len=20)
    requests = trace_workload(vocab, trace, scaling)
    assert [(len(r.prompt_ids), r.output_len) for r in requests] == [(100, 10), (1, 1), (300, 20)]
    assert [r.trace_arrival_s for r in requests] == [0.0, 1.5, 2.0]
    with pytest.raises(ValueError, match="input_scale must be a finite number > 0, got 0"):
        LengthScaling(input_scale=0)


def test_mooncake_hash_ids_become_shared_blocks(vocab: PromptVocab) -> None:
    # Blocks of 512 tokens scaled by 1/64 -> 8 tokens per hash id.
    trace = [
        TraceRequest(0.0, 1500, 4, (0, 1, 2)),   # 1500/64 -> 23 tokens: blocks 0, 1 and 7 of block 2
        TraceRequest(0.1, 1024, 4, (0, 1)),      # 16 tokens: blocks 0, 1
        TraceRequest(0.2, 2048, 4, (0, 5, 6, 7)),
        TraceRequest(0.3, 700, 4, ()),           # no hash ids: fresh random tokens
    ]
    a, b, c, d = trace_workload(vocab, trace, LengthScaling(input_scale=1 / 64), seed=9)
    assert [len(r.prompt_ids) for r in (a, b, c, d)] == [23, 16, 32, 11]
    assert a.prompt_ids[:16] == b.prompt_ids
    assert a.prompt_ids[:8] == c.prompt_ids[:8] and a.prompt_ids[8:16] != c.prompt_ids[8:16]
    # The same hash id is the same block whatever the order of the trace.
    (b_again,) = trace_workload(vocab, trace[1:2], LengthScaling(input_scale=1 / 64), seed=9)
    assert b_again.prompt_ids == b.prompt_ids
    # A configurable block size overrides the scaled 512.
    e, f = trace_workload(vocab, trace[:2], LengthScaling(input_scale=1 / 64), hash_block_tokens=4)
    assert e.prompt_ids[:8] == f.prompt_ids[:8] and e.prompt_ids[8:16] != f.prompt_ids[8:16]


def test_vocab_refuses_a_tokenizer_without_whole_words(tmp_path: Path) -> None:
    from tokenizers import models

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "xy": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match="only 0 whole-word tokens"):
        PromptVocab(tokenizer)
    with pytest.raises(FileNotFoundError, match=r"--tokenizer: no tokenizer\.json"):
        PromptVocab.from_dir(tmp_path)


def test_tokenizer_takes_what_serve_model_takes(tmp_path: Path, tokenizer_dir: Path) -> None:
    """`bench serve --tokenizer` names the served model as `serve --model` does; by default the model
    `edgecloud serve` runs by default, never another model's vocabulary."""
    from edgecloud.bench.serve import tokenizer_dir as resolve
    from edgecloud.llm.demo_model import DEMO_MODEL_DIR
    from edgecloud.llm.gguf import default_model_path

    assert resolve(str(tokenizer_dir)) == tokenizer_dir
    assert resolve("demo") == Path(DEMO_MODEL_DIR)
    default = resolve(None)
    assert (default / "tokenizer.json").is_file()
    assert default == resolve(str(default_model_path()))  # the .gguf file, converted as the server does
    assert Tokenizer.from_file(str(default / "tokenizer.json")).get_vocab_size() == 49152  # SmolLM2's
    with pytest.raises(FileNotFoundError, match=r"--tokenizer: model .*nothing-here.* does not exist"):
        resolve(str(tmp_path / "nothing-here"))
