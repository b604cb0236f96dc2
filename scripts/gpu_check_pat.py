"""One-off GPU check of PAT's Triton kernel: exactness and decode-attention latency on CUDA.

For each of PAT's synthetic trees (``bench.py``'s builder, block size 16, head dim 128) and each
head geometry, one layer's decode attention is run by

* ``paged``: the engine's dense backend, every sequence's whole context gathered through its block
  table and one ``scaled_dot_product_attention`` call with one query per sequence (per-sequence
  decode, FlashAttention-decode semantics: a shared prefix is read once per sequence);
* ``pat_triton``: ``PrefixDecodeAttention.forward`` on CUDA, which dispatches to the Triton kernel;
* ``pat_torch``: the same PAT plan through the torch packed path (``packed.run_packed``);
* ``triton_dense`` and ``triton_cascade``: PAT's Triton kernel on the dense plan (one pack per
  sequence over its whole context: what the kernel does without prefix sharing) and on the
  two-level cascade plan (the common prefix once, then per sequence), so that the kernel itself
  is held fixed and only the packing differs.

Exactness: PAT (Triton) against paged in float32 (max absolute difference), and in the timed
dtype against the float32 result. Timing: CUDA events, median of ``--repeats`` runs after
warm-up (which also compiles the kernels), the methods taking turns. One JSON line per case on
stdout; the exit status is 1 when a case is not exact.

    pip install -e '.[gpu]'    # Triton
    python scripts/gpu_check_pat.py --repeats 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable

import torch

from edgecloud.llm.attention.bench import DEFAULT_HEADS, DEFAULT_TREES, parse_heads, parse_tree, tree_batch
from edgecloud.llm.attention.cascade import CascadeDecodeAttention
from edgecloud.llm.attention.packed import run_packed
from edgecloud.llm.attention.paged import PagedDecodeAttention
from edgecloud.llm.attention.prefix import PrefixDecodeAttention
from edgecloud.llm.attention.prefix_tree import HeadGeometry

BLOCK_SIZE = 16
HEAD_DIM = 128
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}  # max abs vs float32


def timed_ms(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    for fn in fns:  # warm-up: Triton compiles, cuBLAS/SDPA pick their kernels
        fn()
    torch.cuda.synchronize()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, series in zip(fns, times, strict=True):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            series.append(start.elapsed_time(end))
    return [statistics.median(series) for series in times]


def copy_bandwidth() -> float:
    """Bytes/s of a 2 GiB device-to-device copy, read plus written: the floor's bandwidth."""
    src = torch.randn(1 << 28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    ms = statistics.median(timed_ms([lambda: dst.copy_(src)], 10))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def run_case(tree: str, heads: str, dtype: torch.dtype, repeats: int, bandwidth: float) -> dict[str, object]:
    device = torch.device("cuda")
    q_heads, kv_heads = parse_heads(heads)
    batch, num_blocks = tree_batch(parse_tree(tree, BLOCK_SIZE), BLOCK_SIZE, seed=0)
    batch.device = device
    gen = torch.Generator(device=device).manual_seed(0)
    k32 = torch.randn(num_blocks, BLOCK_SIZE, kv_heads, HEAD_DIM, generator=gen, device=device)
    v32 = torch.randn(num_blocks, BLOCK_SIZE, kv_heads, HEAD_DIM, generator=gen, device=device)
    q32 = torch.randn(batch.num_seqs, q_heads, HEAD_DIM, generator=gen, device=device)
    scale = HEAD_DIM ** -0.5

    paged = PagedDecodeAttention()
    paged_plan = paged.plan(batch)
    prefix = PrefixDecodeAttention()
    prefix_plan = prefix.plan(batch)
    reference = paged.forward(paged_plan, q32, k32, v32, scale)
    err_fp32 = float((prefix.forward(prefix_plan, q32, k32, v32, scale) - reference).abs().max())
    if "edgecloud.llm.attention.prefix_triton" not in sys.modules:
        raise RuntimeError("PrefixDecodeAttention did not take the Triton path on CUDA (is triton installed?)")

    query, k_cache, v_cache = q32.to(dtype), k32.to(dtype), v32.to(dtype)
    del q32, k32, v32
    geom = HeadGeometry(kv_heads, q_heads // kv_heads, HEAD_DIM, k_cache.element_size())
    packed = prefix_plan.kernel(geom)
    err_dtype = float((prefix.forward(prefix_plan, query, k_cache, v_cache, scale).float() - reference).abs().max())
    from edgecloud.llm.attention.prefix_triton import run_packed_triton, triton_plan

    baselines = {name: triton_plan(CascadeDecodeAttention(share_prefix=share).build(batch, kv_heads), BLOCK_SIZE)
                 for name, share in (("dense", False), ("cascade", True))}
    err_baselines = max(float((run_packed_triton(plan, query, k_cache, v_cache, scale).float() - reference).abs().max())
                        for plan in baselines.values())
    del reference
    paged_ms, triton_ms, torch_ms, dense_ms, cascade_ms = timed_ms([
        lambda: paged.forward(paged_plan, query, k_cache, v_cache, scale),
        lambda: prefix.forward(prefix_plan, query, k_cache, v_cache, scale),
        lambda: run_packed(packed, query, k_cache, v_cache, scale),
        lambda: run_packed_triton(baselines["dense"], query, k_cache, v_cache, scale),
        lambda: run_packed_triton(baselines["cascade"], query, k_cache, v_cache, scale),
    ], repeats)
    exact = err_fp32 <= TOLERANCE[torch.float32] and max(err_dtype, err_baselines) <= TOLERANCE[dtype]
    return {
        "tree": tree,
        "heads": heads,
        "dtype": str(dtype).removeprefix("torch."),
        "device": torch.cuda.get_device_name(device),
        "seqs": batch.num_seqs,
        "packs": packed.num_packs,
        "tile_groups": len(packed.groups),
        "kv_bytes_paged": sum(batch.context_lens) * geom.kv_bytes_per_token,
        "kv_bytes_pat": packed.kv_tokens_read * geom.kv_bytes_per_token,
        "max_abs_err_fp32": err_fp32,
        "max_abs_err_dtype_vs_fp32": err_dtype,
        "exact": exact,
        "paged_ms": round(paged_ms, 4),
        "pat_triton_ms": round(triton_ms, 4),
        "pat_torch_ms": round(torch_ms, 4),
        "triton_dense_ms": round(dense_ms, 4),
        "triton_cascade_ms": round(cascade_ms, 4),
        "speedup_vs_paged": round(paged_ms / triton_ms, 3),
        "speedup_vs_triton_dense": round(dense_ms / triton_ms, 3),
        "speedup_vs_triton_cascade": round(cascade_ms / triton_ms, 3),
        "kv_floor_ms": round(packed.kv_tokens_read * geom.kv_bytes_per_token / bandwidth * 1e3, 4),
        "repeats": repeats,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--trees", default=";".join(DEFAULT_TREES),
                        help="trees separated by ';' (default: PAT's three)")
    parser.add_argument("--heads", default=",".join(DEFAULT_HEADS), help="query/kv heads, comma separated")
    parser.add_argument("--dtypes", default="float16,float32", help="timed dtypes, comma separated")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    all_exact = True
    bandwidth = copy_bandwidth()
    print(json.dumps({"device": torch.cuda.get_device_name(), "copy_bandwidth_gb_s": round(bandwidth / 1e9)}),
          flush=True)
    for tree in args.trees.split(";"):
        for heads in args.heads.split(","):
            for name in args.dtypes.split(","):
                case = run_case(tree, heads, getattr(torch, name), args.repeats, bandwidth)
                all_exact &= bool(case["exact"])
                print(json.dumps(case), flush=True)
                torch.cuda.empty_cache()
    return 0 if all_exact else 1


if __name__ == "__main__":
    sys.exit(main())
