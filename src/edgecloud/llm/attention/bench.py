"""``edgecloud bench attention``: dense paged vs two-level cascade vs PAT on PAT's synthetic trees.

A tree is written as in the PAT paper (§6, synthetic workloads): ``nodes-per-level_len-per-level``,
e.g. ``1,4,16_2048,512,128`` is one 2048-token root, 4 children of 512 tokens each, and 16
grandchildren (4 per child) of 128 tokens; every node of the last level is one decoding
sequence. Blocks of every node are drawn from a shuffled pool, as in a cache after some churn.

All three methods run in one process on the same batch and the same KV cache; each forward is
one layer's decode attention, timed as the median of ``repeats`` runs after a warm-up, the
methods taking turns so that load from other processes hits them alike. Dense and
cascade use the same gather and batched-product primitives as ours (``cascade.py``), so the
ratios measure what is read and how it is scheduled. The engine's own paged backend
(``paged.py``) can be timed too (``engine_paged``); it is slower than that dense baseline.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgecloud.llm.attention.backend import DecodeBatch
from edgecloud.llm.attention.cascade import CascadeDecodeAttention
from edgecloud.llm.attention.paged import PagedDecodeAttention
from edgecloud.llm.attention.prefix import PrefixDecodeAttention
from edgecloud.llm.attention.prefix_tree import HeadGeometry

DEFAULT_TREES = ("1,10_4096,416", "1,4,16_2048,512,128", "1,4,16,512_1024,256,128,32")
DEFAULT_HEADS = ("32/32", "32/8")
HEAD_DIM = 128
ENGINE_PAGED_GATHER_TOKENS = 1 << 14  # per call: 16k tokens × 32 heads × 128 × 4 B = 256 MiB of K


@dataclass(frozen=True)
class TreeSpec:
    nodes: tuple[int, ...]  # nodes per level, root level first
    lens: tuple[int, ...]  # tokens per node, per level

    @property
    def text(self) -> str:
        return ",".join(map(str, self.nodes)) + "_" + ",".join(map(str, self.lens))


def parse_tree(text: str, block_size: int) -> TreeSpec:
    """Parse ``nodes-per-level_len-per-level``; shared levels must be whole blocks."""
    try:
        nodes_text, lens_text = text.split("_")
        nodes = tuple(int(x) for x in nodes_text.split(","))
        lens = tuple(int(x) for x in lens_text.split(","))
    except ValueError:
        raise ValueError(f"tree must look like '1,4,16_2048,512,128', got {text!r}") from None
    if len(nodes) != len(lens):
        raise ValueError(f"tree {text!r}: {len(nodes)} node counts but {len(lens)} lengths")
    if any(n < 1 for n in nodes) or any(n < 1 for n in lens):
        raise ValueError(f"tree {text!r}: node counts and lengths must be >= 1")
    for level in range(1, len(nodes)):
        if nodes[level] % nodes[level - 1]:
            raise ValueError(f"tree {text!r}: level {level} has {nodes[level]} nodes, not a multiple "
                             f"of the {nodes[level - 1]} of level {level - 1}")
    for level, length in enumerate(lens[:-1]):
        if length % block_size:
            raise ValueError(f"tree {text!r}: level {level} length {length} must be a multiple of "
                             f"block_size={block_size} (only the leaves may end inside a block)")
    return TreeSpec(nodes, lens)


def parse_heads(text: str) -> tuple[int, int]:
    try:
        q, kv = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"heads must look like '32/8' (query/kv), got {text!r}") from None
    if q < 1 or kv < 1 or q % kv:
        raise ValueError(f"heads {text!r}: query heads must be a positive multiple of kv heads")
    return q, kv


def tree_batch(spec: TreeSpec, block_size: int, seed: int = 0) -> tuple[DecodeBatch, int]:
    """The decode batch of a synthetic tree (one sequence per leaf) and the number of blocks."""
    per_node = [-(-length // block_size) for length in spec.lens]
    num_blocks = sum(n * b for n, b in zip(spec.nodes, per_node, strict=True))
    pool = np.random.default_rng(seed).permutation(num_blocks).tolist()
    levels: list[list[list[int]]] = []  # per level, per node: block ids from the root down
    for level, (count, blocks) in enumerate(zip(spec.nodes, per_node, strict=True)):
        fan = count // spec.nodes[level - 1] if level else count
        row = []
        for node in range(count):
            above = levels[level - 1][node // fan] if level else []
            row.append(above + [pool.pop() for _ in range(blocks)])
        levels.append(row)
    tables = levels[-1]
    context = sum(spec.lens)
    return DecodeBatch(tables, [context] * len(tables), block_size), num_blocks


@dataclass
class AttentionCase:
    tree: str
    heads: str
    dense_ms: float
    cascade_ms: float
    prefix_ms: float
    kv_bytes_dense: int
    kv_bytes_prefix: int
    pack_ms: float


def _median_ms(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _interleaved_median_ms(fns: Sequence[Callable[[], object]], repeats: int) -> list[float]:
    """Round-robin over the methods, so that load from other processes hits them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, series in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            series.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(series) for series in times]


def run_case(spec: TreeSpec, heads: tuple[int, int], block_size: int, repeats: int, seed: int = 0,
             engine_paged: bool = False) -> tuple[AttentionCase, dict[str, float]]:
    """One tree × head configuration; returns the case and extra diagnostics for the console."""
    q_heads, kv_heads = heads
    batch, num_blocks = tree_batch(spec, block_size, seed)
    gen = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(num_blocks, block_size, kv_heads, HEAD_DIM, generator=gen)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, HEAD_DIM, generator=gen)
    query = torch.randn(batch.num_seqs, q_heads, HEAD_DIM, generator=gen)
    scale = HEAD_DIM ** -0.5
    geom = HeadGeometry(kv_heads, q_heads // kv_heads, HEAD_DIM, k_cache.element_size())

    dense = CascadeDecodeAttention(share_prefix=False)
    dense_plan = dense.plan(batch)
    cascade = CascadeDecodeAttention()
    cascade_plan = cascade.plan(batch)
    prefix = PrefixDecodeAttention()

    def cold_plan() -> object:
        plan = PrefixDecodeAttention().plan(batch)
        return plan.kernel(geom)

    pack_ms = _median_ms(cold_plan, repeats)
    prefix_plan = prefix.plan(batch)
    kernel = prefix_plan.kernel(geom)
    # the next decode step: every sequence appended one token; the tree comes from the cache
    step = DecodeBatch([list(row) for row in batch.block_tables], [n + 1 for n in batch.context_lens],
                       block_size)
    for seq, row in enumerate(step.block_tables):
        if -(-step.context_lens[seq] // block_size) > len(row):
            row.append(num_blocks + seq)  # a fresh block; the planner never reads the cache
    warm_ms = _median_ms(lambda: prefix.plan(step).kernel(geom), repeats)

    ref = dense.forward(dense_plan, query, k_cache, v_cache, scale)
    got_cascade = cascade.forward(cascade_plan, query, k_cache, v_cache, scale)
    got_prefix = prefix.forward(prefix_plan, query, k_cache, v_cache, scale)
    dense_ms, cascade_ms, prefix_ms = _interleaved_median_ms([
        lambda: dense.forward(dense_plan, query, k_cache, v_cache, scale),
        lambda: cascade.forward(cascade_plan, query, k_cache, v_cache, scale),
        lambda: prefix.forward(prefix_plan, query, k_cache, v_cache, scale),
    ], repeats)
    case = AttentionCase(
        tree=spec.text,
        heads=f"{q_heads}/{kv_heads}",
        dense_ms=round(dense_ms, 3),
        cascade_ms=round(cascade_ms, 3),
        prefix_ms=round(prefix_ms, 3),
        kv_bytes_dense=sum(batch.context_lens) * geom.kv_bytes_per_token,
        kv_bytes_prefix=kernel.kv_tokens_read * geom.kv_bytes_per_token,
        pack_ms=round(pack_ms, 3),
    )
    extra: dict[str, float] = {
        "warm_pack_ms": round(warm_ms, 3),
        "kv_bytes_cascade": cascade_plan.kernel(kv_heads).kv_tokens_read * geom.kv_bytes_per_token,
        "packs": kernel.num_packs,
        "tile_groups": len(kernel.groups),
        "max_abs_err_cascade": float((got_cascade - ref).abs().max()),
        "max_abs_err_prefix": float((got_prefix - ref).abs().max()),
    }
    if engine_paged:
        # the engine's own paged backend, in groups of sequences so its gathered KV fits memory
        paged = PagedDecodeAttention()
        per_call = max(1, ENGINE_PAGED_GATHER_TOKENS // max(batch.context_lens))
        plans = [(slice(i, i + per_call), paged.plan(DecodeBatch(
            batch.block_tables[i:i + per_call], batch.context_lens[i:i + per_call], block_size)))
            for i in range(0, batch.num_seqs, per_call)]

        def run_paged() -> torch.Tensor:
            return torch.cat([paged.forward(p, query[s], k_cache, v_cache, scale) for s, p in plans])

        extra["max_abs_err_engine_paged"] = float((run_paged() - ref).abs().max())
        extra["engine_paged_ms"] = round(_median_ms(run_paged, repeats), 3)
    return case, extra


def run_attention_bench(trees: Sequence[str], heads: Sequence[str], threads: int, repeats: int,
                        block_size: int, engine_paged: bool = False, progress: bool = True
                        ) -> dict[str, Any]:
    specs = [parse_tree(t, block_size) for t in trees]
    head_cfgs = [parse_heads(h) for h in heads]
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    torch.set_num_threads(threads)
    from rich.progress import Progress

    cases, extras = [], []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("attention", total=len(specs) * len(head_cfgs))
        for spec in specs:
            for cfg in head_cfgs:
                bar.update(task, description=f"{spec.text} heads {cfg[0]}/{cfg[1]}")
                case, extra = run_case(spec, cfg, block_size, repeats, engine_paged=engine_paged)
                cases.append(case)
                extras.append({"tree": case.tree, "heads": case.heads, **extra})
                bar.advance(task)
    return {
        "benchmark": "attention",
        "machine": _cpu_name(),
        "torch": torch.__version__,
        "threads": threads,
        "head_dim": HEAD_DIM,
        "block_size": block_size,
        "dtype": "float32",
        "repeats": repeats,
        "cases": [asdict(c) for c in cases],
        "diagnostics": extras,
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} logical CPUs"
    except OSError:
        pass
    return f"{platform.machine()}, {os.cpu_count()} logical CPUs"


def write_plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = result["cases"]
    labels = [c["tree"].replace("_", "\n") + f"\nheads {c['heads']}" for c in cases]
    x = np.arange(len(cases))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(cases)), 4.5))
    series = ((-0.27, "dense_ms", "dense (one query per sequence)"), (0.0, "cascade_ms", "two-level cascade"),
              (0.27, "prefix_ms", "PAT prefix (ours)"))
    for offset, key, name in series:
        ax.bar(x + offset, [c[key] for c in cases], width=0.27, label=name)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("decode attention, one layer (ms, median)")
    threads = result["threads"]
    ax.set_title(f"Decode attention on PAT trees, CPU, {threads} thread{'s' if threads > 1 else ''}, float32")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_summary(result: dict[str, Any], console: Any = None) -> None:
    """The results as a table on ``console`` (a rich Console; a default one when None)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"decode attention, {result['threads']} threads (median of {result['repeats']})")
    for col in ("tree", "heads", "dense ms", "cascade ms", "prefix ms", "vs dense", "vs cascade",
                "KV prefix/dense", "pack ms (cold/warm)", "max err"):
        table.add_column(col)
    for case, extra in zip(result["cases"], result["diagnostics"], strict=True):
        table.add_row(
            case["tree"], case["heads"], f"{case['dense_ms']:.1f}", f"{case['cascade_ms']:.1f}",
            f"{case['prefix_ms']:.1f}", f"{case['dense_ms'] / case['prefix_ms']:.2f}x",
            f"{case['cascade_ms'] / case['prefix_ms']:.2f}x",
            f"{case['kv_bytes_prefix'] / case['kv_bytes_dense']:.3f}",
            f"{case['pack_ms']:.2f}/{extra['warm_pack_ms']:.2f}",
            f"{max(extra['max_abs_err_prefix'], extra['max_abs_err_cascade']):.1e}",
        )
    (console or Console()).print(table)


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(result, indent=2) + "\n")
