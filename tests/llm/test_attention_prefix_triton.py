"""PAT's Triton kernel, run in Triton's interpreter on the CPU: exact against dense paged attention.

The kernel tests need Triton (a ``dev`` dependency on Linux x86-64, so ``make test`` runs them;
skipped, saying why, where it is missing). The interpreter executes the same kernel with numpy
semantics, so this checks its indexing (block table, GQA rows, masks, row blocks) and its online
softmax, not its GPU speed. ``test_cpu_path_never_imports_triton`` needs no Triton and always runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from dataclasses import replace
from types import ModuleType

import pytest
import torch

from edgecloud.llm.attention.bench import parse_tree, tree_batch
from edgecloud.llm.attention.paged import PagedDecodeAttention
from edgecloud.llm.attention.prefix import PrefixDecodeAttention
from edgecloud.llm.attention.prefix_tree import HeadGeometry, PackCostModel

needs_triton = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None,
    reason="Triton is not installed (a dev dependency on Linux x86-64; pip install 'edgecloud[gpu]'); "
    "the kernel test runs in Triton's CPU interpreter",
)


@pytest.fixture(scope="module")
def kernel() -> ModuleType:
    """``prefix_triton`` with its kernels built for Triton's interpreter, so they run on CPU tensors.

    Triton reads TRITON_INTERPRET when it builds a kernel, its own library helpers included, and
    those are built when Triton is first imported — which torch may do well before this module
    (torch.utils.flop_counter does). So tests/conftest.py sets it for the whole session."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET is not 1 (tests/conftest.py sets it unless told otherwise): "
                    "the kernel tests run in Triton's interpreter")
    return importlib.import_module("edgecloud.llm.attention.prefix_triton")


HEAD_DIM = 16
BLOCK_SIZE = 4
SPLIT_EVERYTHING = PackCostModel(min_split_tokens=1, work_per_thread=1 << 20, group_overhead_s=0.0)
RAGGED_SPLITS = replace(PackCostModel.cuda(), min_split_tokens=4)


@needs_triton
@pytest.mark.parametrize(("tree", "q_heads", "kv_heads", "cost"), [
    # root of 2 blocks, 3 leaves ending inside a block: one pack with the leaves joined and masked
    ("1,3_8,5", 2, 2, None),
    # three levels, GQA ratio 4
    ("1,2,4_8,4,3", 8, 2, None),
    # the same split into one-block packs: several tile groups, several partials per query to merge
    ("1,2,4_8,4,3", 8, 2, SPLIT_EVERYTHING),
    # 20 leaves × GQA 4 = 80 rows: two row blocks of one pack
    ("1,20_8,3", 8, 2, None),
    # no sharing: one sequence, one pack, its last block padded
    ("1_13", 4, 1, None),
    # the CUDA cost model: ragged packs (each walks its own length), grouped by row tile
    ("1,4,16_8,4,3", 8, 2, PackCostModel.cuda()),
    # ... with long packs cut into length-balanced chunks
    ("1,3_40,5", 4, 4, RAGGED_SPLITS),
])
def test_triton_kernel_matches_paged(kernel: ModuleType, tree: str, q_heads: int, kv_heads: int,
                                     cost: PackCostModel | None) -> None:
    batch, num_blocks = tree_batch(parse_tree(tree, BLOCK_SIZE), BLOCK_SIZE, seed=0)
    gen = torch.Generator().manual_seed(1)
    k_cache = torch.randn(num_blocks, BLOCK_SIZE, kv_heads, HEAD_DIM, generator=gen)
    v_cache = torch.randn(num_blocks, BLOCK_SIZE, kv_heads, HEAD_DIM, generator=gen)
    query = torch.randn(batch.num_seqs, q_heads, HEAD_DIM, generator=gen)
    scale = HEAD_DIM ** -0.5
    paged = PagedDecodeAttention()
    expected = paged.forward(paged.plan(batch), query, k_cache, v_cache, scale)

    plan = PrefixDecodeAttention(cost=cost, parallelism=2).plan(batch)
    packed = plan.kernel(HeadGeometry(kv_heads, q_heads // kv_heads, HEAD_DIM, k_cache.element_size()))
    got = kernel.run_packed_triton(kernel.triton_plan(packed, BLOCK_SIZE), query, k_cache, v_cache, scale)

    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@needs_triton
def test_half_precision_tiles_match_float32(kernel: ModuleType) -> None:
    # float16 takes the kernel's 64-token KV steps (float32 takes 16): ragged packs longer than one step
    batch, num_blocks = tree_batch(parse_tree("1,3,6_72,40,9", BLOCK_SIZE), BLOCK_SIZE, seed=0)
    gen = torch.Generator().manual_seed(2)
    k_cache = torch.randn(num_blocks, BLOCK_SIZE, 2, HEAD_DIM, generator=gen)
    v_cache = torch.randn(num_blocks, BLOCK_SIZE, 2, HEAD_DIM, generator=gen)
    query = torch.randn(batch.num_seqs, 4, HEAD_DIM, generator=gen)
    scale = HEAD_DIM ** -0.5
    paged = PagedDecodeAttention()
    expected = paged.forward(paged.plan(batch), query, k_cache, v_cache, scale)
    plan = PrefixDecodeAttention(cost=RAGGED_SPLITS, parallelism=2).plan(batch)
    packed = plan.kernel(HeadGeometry(2, 2, HEAD_DIM, 2))
    half = [t.to(torch.float16) for t in (query, k_cache, v_cache)]
    got = kernel.run_packed_triton(kernel.triton_plan(packed, BLOCK_SIZE), *half, scale)
    assert got.dtype == torch.float16
    torch.testing.assert_close(got.float(), expected, atol=5e-3, rtol=0)


def test_cpu_path_never_imports_triton() -> None:
    code = (
        "import sys, torch\n"
        "from edgecloud.llm.attention import DecodeBatch, PrefixDecodeAttention\n"
        "batch = DecodeBatch([[0, 1], [0, 2]], [7, 6], 4)\n"
        "backend = PrefixDecodeAttention()\n"
        "cache = torch.randn(3, 4, 1, 8)\n"
        "backend.forward(backend.plan(batch), torch.randn(2, 2, 8), cache, cache, 0.5)\n"
        "assert 'triton' not in sys.modules, 'the CPU path imported triton'\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
