"""The served engine core (its own process) drops a step of offline (``flex``) prefill between layers
when an online request arrives on its socket, and the offline answers stay what they are alone."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from edgecloud.llm.random_model import write_random_model

from .conftest import start_server


@pytest.fixture(scope="module")
def eight_layers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("abandon") / "llama", arch="llama", num_hidden_layers=8,
                              max_position_embeddings=4096, hidden_size=64, intermediate_size=128,
                              num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.real_clock
def test_online_arrivals_abandon_flex_prefill_steps_and_flex_answers_do_not_change(
    eight_layers: Path, tmp_path: Path
) -> None:
    """Wall clock: whether an online request lands inside a flex step's layers is a matter of timing.
    40 arrivals spread over ~2 s of nothing but 256-token flex prefill steps of 8 layers: each has a
    large chance to land between two layers; the test needs one."""
    server = start_server(eight_layers, tmp_path / "server.log", "--flex-max-batched-tokens", "256",
                          "--max-num-seqs", "8", "--kv-cache-memory-mb", "64")
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 250) for _ in range(1500)] for _ in range(8)]

    def complete(prompt: list[int], tier: str, max_tokens: int) -> str:
        r = httpx.post(f"{server.base_url}/v1/completions", timeout=120, json={
            "model": server.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "service_tier": tier})
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    try:
        with ThreadPoolExecutor(8) as pool:
            flex = [pool.submit(complete, p, "flex", 4) for p in prompts]
            time.sleep(0.05)
            for _ in range(40):
                complete([rng.randrange(3, 250) for _ in range(8)], "default", 1)
                time.sleep(rng.uniform(0.0, 0.05))
                if all(f.done() for f in flex):
                    break
            got = [f.result() for f in flex]
        abandoned = server.metrics()["edgecloud_num_abandoned_steps_total"]
        want = [complete(p, "default", 4) for p in prompts]  # each alone, nothing to interrupt it
    finally:
        assert server.stop() == 0, server.log_path.read_text()
    assert got == want
    assert abandoned >= 1, abandoned
    print(f"abandoned steps: {abandoned:.0f}")
