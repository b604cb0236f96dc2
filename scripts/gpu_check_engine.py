"""One-off CUDA check of the engine, for a session that has a GPU.

1. Exactness: a random-weight Llama (head dim 128, GQA 4:1) in float32 with TF32 off; the engine's
   greedy tokens on CUDA, with the ``paged`` and the ``prefix`` (PAT, Triton) decode backends, on a
   prefix tree of prompts, must equal transformers' greedy tokens on CUDA (one prompt at a time).
2. Decode time: the same model in bfloat16; 64 requests sharing one long prefix (default 4096
   tokens, plus a 16-token unique suffix each), 64 output tokens, run by ``paged`` and ``prefix``
   in turn in this process; median TPOT from the engine's own request metrics.

One JSON line per part on stdout; exit status 1 when tokens differ.

    python scripts/gpu_check_engine.py
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgecloud.llm import LLM, SamplingParams
from edgecloud.llm.random_model import write_random_model

MODEL = {"vocab_size": 4096, "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 4,
         "num_attention_heads": 8, "num_key_value_heads": 2, "max_position_embeddings": 8192}


def tree_prompts(seed: int, vocab: int) -> list[list[int]]:
    """System prompt -> 3 templates -> 4 requests each, plus two unrelated prompts."""
    rng = random.Random(seed)

    def words(n: int) -> list[int]:
        return [rng.randrange(2, vocab) for _ in range(n)]

    system = words(300)
    prompts = [system + template + words(rng.randint(1, 40)) for template in (words(90), words(130), words(40))
               for _ in range(4)]
    return [*prompts, words(170), words(50)]


def hf_greedy(model_dir: Path, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).to("cuda").float().eval()
    outs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt], device="cuda")
            seq = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 min_new_tokens=max_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
            outs.append(seq[0, len(prompt):].tolist())
    del model
    torch.cuda.empty_cache()
    return outs


def exactness(model_dir: Path, max_tokens: int) -> dict[str, object]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    prompts = tree_prompts(seed=3, vocab=MODEL["vocab_size"])
    want = hf_greedy(model_dir, prompts, max_tokens)
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    result: dict[str, object] = {"part": "exactness", "device": torch.cuda.get_device_name(), "prompts": len(prompts),
                                 "max_tokens": max_tokens}
    for backend in ("paged", "prefix"):
        llm = LLM(model=str(model_dir), device="cuda", dtype="float32", attention_backend=backend,
                  kv_cache_memory_mb=512)
        got = [out.outputs[0].token_ids for out in llm.generate(prompts, params)]
        result[f"{backend}_equal_prompts"] = sum(g == w for g, w in zip(got, want, strict=True))
        result[f"{backend}_first_diff"] = next((i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w),
                                               None)
        del llm
        torch.cuda.empty_cache()
    if "edgecloud.llm.attention.prefix_triton" not in sys.modules:
        raise RuntimeError("the prefix backend did not take the Triton path on CUDA")
    result["exact"] = all(result[f"{b}_equal_prompts"] == len(prompts) for b in ("paged", "prefix"))
    return result


def decode_time(model_dir: Path, prefix_len: int, requests: int, max_tokens: int) -> dict[str, object]:
    torch.backends.cuda.matmul.allow_tf32 = True
    rng = random.Random(7)
    shared = [rng.randrange(2, MODEL["vocab_size"]) for _ in range(prefix_len)]
    prompts = [shared + [rng.randrange(2, MODEL["vocab_size"]) for _ in range(16)] for _ in range(requests)]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    result: dict[str, object] = {"part": "decode_time", "device": torch.cuda.get_device_name(), "dtype": "bfloat16",
                                 "prefix_len": prefix_len, "requests": requests, "max_tokens": max_tokens}
    llms = {b: LLM(model=str(model_dir), device="cuda", dtype="bfloat16", attention_backend=b,
                   kv_cache_memory_mb=4096, max_num_seqs=requests, max_num_batched_tokens=8192)
            for b in ("paged", "prefix")}
    tpot: dict[str, list[float]] = {b: [] for b in llms}
    wall: dict[str, list[float]] = {b: [] for b in llms}
    tokens: dict[str, list[list[int]]] = {}
    for round_ in range(3):  # round 0 warms up (Triton compiles); the backends take turns
        for backend, llm in llms.items():
            torch.cuda.synchronize()
            start = time.perf_counter()
            outs = llm.generate(prompts, params)
            torch.cuda.synchronize()
            if round_ == 0:
                tokens[backend] = [o.outputs[0].token_ids for o in outs]
                continue
            wall[backend].append(time.perf_counter() - start)
            for out in outs:
                m = out.metrics
                tpot[backend].append((m.finished_time - m.first_token_time) / (max_tokens - 1) * 1e3)
    for backend in llms:
        result[f"{backend}_tpot_ms_p50"] = round(statistics.median(tpot[backend]), 3)
        result[f"{backend}_wall_s"] = round(statistics.median(wall[backend]), 3)
    result["tpot_change"] = round(result["prefix_tpot_ms_p50"] / result["paged_tpot_ms_p50"] - 1, 3)
    result["same_tokens_bf16"] = sum(a == b for a, b in zip(tokens["paged"], tokens["prefix"], strict=True))
    return result


def profile(model_dir: Path, out_dir: Path, prefix_len: int, requests: int, max_tokens: int) -> None:
    """Where a decode step's time goes with each backend: host Python (cProfile, cumulative) and
    device kernels (torch.profiler, self CUDA time), one text file each in ``out_dir``."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    rng = random.Random(7)
    shared = [rng.randrange(2, MODEL["vocab_size"]) for _ in range(prefix_len)]
    prompts = [shared + [rng.randrange(2, MODEL["vocab_size"]) for _ in range(16)] for _ in range(requests)]
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    for backend in ("paged", "prefix"):
        llm = LLM(model=str(model_dir), device="cuda", dtype="bfloat16", attention_backend=backend,
                  kv_cache_memory_mb=4096, max_num_seqs=requests, max_num_batched_tokens=8192)
        llm.generate(prompts, params)  # warm-up and prefix cache
        host = cProfile.Profile()
        host.enable()
        llm.generate(prompts, params)
        host.disable()
        text = io.StringIO()
        pstats.Stats(host, stream=text).sort_stats("cumulative").print_stats(45)
        (out_dir / f"host_{backend}.txt").write_text(text.getvalue())
        with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            llm.generate(prompts, params)
        (out_dir / f"device_{backend}.txt").write_text(
            prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25))
        del llm
        torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--max-tokens", type=int, default=24, help="greedy tokens compared per prompt")
    parser.add_argument("--prefix-len", type=int, default=4096)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--profile-dir", type=Path, default=None,
                        help="also profile one generate per backend (host and device) into this folder")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_random_model(Path(tmp) / "llama", arch="llama", seed=0, **MODEL)
        check = exactness(model_dir, args.max_tokens)
        print(json.dumps(check), flush=True)
        print(json.dumps(decode_time(model_dir, args.prefix_len, args.requests, args.decode_tokens)), flush=True)
        if args.profile_dir is not None:
            profile(model_dir, args.profile_dir, args.prefix_len, args.requests, args.decode_tokens)
    return 0 if check["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
