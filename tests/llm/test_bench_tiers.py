"""`bench tiers` with long flex prompts: the prefill-start waits of online requests that arrive while
flex work is prefilling (OOCO's preemption figure, issue #19), on the tiny random Llama."""

from __future__ import annotations

import json
from pathlib import Path

from edgecloud.llm.bench_tiers import bench_tiers


def test_online_arrivals_during_flex_prefill_are_timed_against_a_layer_plus_a_step(
    llama_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tiers.json"
    r = bench_tiers(str(llama_dir), flex_batch=4, flex_output=4, online_requests=6, online_prompt_len=32,
                    online_output=2, rate_per_s=40.0, threads=1, json_path=out, flex_prompt_len=(300, 400))
    # every flex request starts with a 300+ token prompt prefilled 4 tokens a step: flex prefill runs
    # the whole time, so online arrivals fall into flex prefill steps
    assert r.flex_max_batched_tokens == 4 and r.num_layers == 2
    assert r.prefill_arrivals >= 1
    assert len(r.start_wait_ms) == len(r.start_bound_ms) == r.prefill_arrivals
    assert all(w >= 0 for w in r.start_wait_ms)
    # the bound is a layer's share of a flex prefill step + the flex batch's decode step
    assert all(b > r.decode_step_ms for b in r.start_bound_ms)
    assert 0 <= r.start_within_bound <= r.prefill_arrivals
    saved = json.loads(out.read_text())
    assert saved["prefill_arrivals"] == r.prefill_arrivals and saved["flex_prompt_len"] == [300, 400]


def test_short_flex_prompts_leave_the_prefill_figures_out(llama_dir: Path) -> None:
    r = bench_tiers(str(llama_dir), flex_batch=2, flex_output=3, online_requests=3, online_prompt_len=16,
                    online_output=2, rate_per_s=40.0, threads=1)
    assert r.prefill_arrivals == 0 and r.start_wait_ms == []
