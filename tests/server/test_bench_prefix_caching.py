"""Benchmark: the server with and without prefix caching on the Mooncake conversation trace,
whose requests share prompt prefixes (``hash_ids``). Same model, same workload, same run;
writes ``out/server/prefix_caching.{json,png}``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgecloud.bench.report import comparison_plot
from edgecloud.llm.random_model import write_random_model

from .conftest import start_server

MOONCAKE = Path("/work/shared/traces/mooncake_conversation.jsonl")
OUT = Path("out/server")
NUM_REQUESTS = 200


def replay(base_url: str, model_dir: Path, out: Path, metrics_before: dict[str, float]) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "edgecloud.cli", "bench", "serve", "--base-url", base_url,
        "--tokenizer", str(model_dir), "--trace", str(MOONCAKE), "--num-requests", str(NUM_REQUESTS),
        # 512-token hash blocks become 16 tokens (one KV block): lengths / 32.
        "--input-scale", "0.03125", "--hash-block-tokens", "16", "--max-input-len", "1000",
        "--output-scale", "0.1", "--max-output-len", "64", "--time-scale", "0.05",
        "--json", str(out), "--quiet",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stderr
    return json.loads(out.read_text())


@pytest.mark.bench
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not MOONCAKE.is_file(), reason="shared Mooncake trace not on this machine")
def test_prefix_caching_on_mooncake(tmp_path: Path) -> None:
    model_dir = write_random_model(
        tmp_path / "model", hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
    )
    OUT.mkdir(parents=True, exist_ok=True)
    reports: dict[str, dict[str, Any]] = {}
    hit_rates: dict[str, float] = {}
    for label, extra in (("no prefix caching", ["--no-prefix-caching"]), ("prefix caching", [])):
        server = start_server(model_dir, tmp_path / f"{label}.log", "--kv-cache-memory-mb", "256", *extra)
        try:
            reports[label] = replay(server.base_url, model_dir, tmp_path / f"{label}.json", server.metrics())
            metrics = server.metrics()
            queries = metrics["edgecloud_prefix_cache_queries_total"]
            hit_rates[label] = metrics["edgecloud_prefix_cache_hits_total"] / queries if queries else 0.0
        finally:
            assert server.stop() == 0
    base, ours = reports["no prefix caching"]["summary"], reports["prefix caching"]["summary"]
    result = {
        "workload": f"Mooncake conversation trace, first {NUM_REQUESTS} requests, lengths / 32, hash block 16 tokens, "
                    "outputs x0.1 (cap 64), timestamps x0.05",
        "model": "random Llama, hidden 128, 4 layers, fp32, 1 torch thread",
        "machine": "2 shared CPU cores (noisy: other jobs running)",
        "prefix_cache_hit_rate": hit_rates,
        "summaries": {label: report["summary"] for label, report in reports.items()},
        "ratios (no caching / caching)": {
            "ttft_mean": base["ttft"]["mean"] / ours["ttft"]["mean"],
            "ttft_p99": base["ttft"]["p99"] / ours["ttft"]["p99"],
            "e2e_mean": base["e2e"]["mean"] / ours["e2e"]["mean"],
            "output_token_throughput": ours["output_token_throughput"] / base["output_token_throughput"],
        },
    }
    (OUT / "prefix_caching.json").write_text(json.dumps(result, indent=2) + "\n")
    comparison_plot(OUT / "prefix_caching.png", reports, "Mooncake conversation replay: prefix caching off vs on")
    print(json.dumps({k: result[k] for k in ("prefix_cache_hit_rate", "ratios (no caching / caching)")}, indent=2))
    assert base["completed"] == ours["completed"] == NUM_REQUESTS
    assert hit_rates["prefix caching"] > 0.2 and hit_rates["no prefix caching"] == 0.0
