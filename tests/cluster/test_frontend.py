"""The router's engine over real engine instances (cores in threads of this process): P/D gives
one instance's output, hand-overs skip what the decode side holds, prefix-aware routing keeps a
shared prefix on one instance, and a cluster with nobody up refuses requests."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgecloud.llm import EngineDeadError, LLMEngine, OutputKind, SamplingParams
from tests.cluster.conftest import BLOCK_BYTES, engine_config, thread_cluster

PROMPTS = [[5, 6, 7], list(range(10, 26)), list(range(30, 67)), [9, 8, 7, 6, 5, 4, 3, 2, 11, 12, 13]]


def one_instance(model: Path, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    engine = LLMEngine(engine_config(model))
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, params)
    finals = {}
    while engine.has_unfinished():
        finals.update({o.request_id: o.outputs for o in engine.step() if o.finished})
    return [[c.token_ids for c in finals[str(i)]] for i in range(len(prompts))]  # type: ignore[misc]


async def answers(cluster, prompts: list[list[int]], params: SamplingParams, tag: str) -> list[list[list[int]]]:  # type: ignore[no-untyped-def]
    async def one(i: int, prompt: list[int]) -> list[list[int]]:
        outs = [o async for o in cluster.generate(prompt, params, f"{tag}{i}", output_kind=OutputKind.FINAL_ONLY)]
        return [c.token_ids for c in outs[-1].outputs]

    return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts))))


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
    SamplingParams(temperature=0.9, top_p=0.9, seed=7, n=2, max_tokens=8, ignore_eos=True),
], ids=["greedy", "seeded-n2"])
def test_prefill_here_decode_there_gives_one_instances_output(demo_dir: Path, params: SamplingParams) -> None:
    want = one_instance(demo_dir, PROMPTS, params)

    async def run() -> None:
        cluster = thread_cluster(demo_dir, ["prefill", "decode"], "pd")
        await cluster.start()
        try:
            assert await answers(cluster, PROMPTS, params, "a") == want
            # Every prompt's full blocks went over once; the same prompts again find them at the
            # decode instance and nothing is sent.
            first = {h.request_id: h.transfer for h in cluster.handovers}
            assert [first[f"a{i}"].blocks for i in range(4)] == [len(p) // 4 for p in PROMPTS]
            assert sum(t.sent for t in first.values()) == sum(len(p) // 4 for p in PROMPTS)
            assert all(t.bytes == t.sent * BLOCK_BYTES for t in first.values())  # fp32 K and V
            assert await answers(cluster, PROMPTS, params, "b") == want
            again = [h.transfer for h in cluster.handovers if h.request_id.startswith("b")]
            assert sum(t.sent for t in again) == 0 and sum(t.skipped for t in again) == sum(t.blocks for t in again)
            prefill, decode = cluster.instances
            assert decode.stats().prefix_cache_hits > 0
            assert prefill.engine.core_kind == "thread"
            pins = await prefill.engine.control("stats")
            assert pins.num_free_blocks == pins.num_total_blocks  # the exporter unpinned everything
        finally:
            await cluster.shutdown()

    asyncio.run(run())


def test_prefix_aware_keeps_a_shared_prefix_on_one_instance(demo_dir: Path) -> None:
    system = list(range(100, 140))
    prompts = [[*system, 200 + i, 201 + i] for i in range(6)]
    params = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)

    async def run(policy: str) -> tuple[list[int], float]:
        cluster = thread_cluster(demo_dir, ["mixed", "mixed", "mixed"], policy)
        await cluster.start()
        try:
            for i, prompt in enumerate(prompts):  # one after another: each sees the last one's blocks
                await answers(cluster, [prompt], params, f"r{i}-")
            assert cluster.router is not None
            routed = [v.routed for v in cluster.router.views]
            stats = cluster.stats()
            return routed, stats.prefix_cache_hits / stats.prefix_cache_queries
        finally:
            await cluster.shutdown()

    aware, aware_hits = asyncio.run(run("prefix-aware"))
    spread, spread_hits = asyncio.run(run("round-robin"))
    assert sorted(aware) == [0, 0, 6] and spread == [2, 2, 2]
    assert aware_hits > spread_hits
    assert aware_hits == pytest.approx(5 * 40 / (6 * 42))  # all but the first find the 40-token prefix


def test_with_no_instance_up_requests_are_refused_and_health_says_why(demo_dir: Path) -> None:
    async def run() -> None:
        cluster = thread_cluster(demo_dir, ["mixed", "mixed"], "least-outstanding")
        await cluster.start()
        try:
            assert cluster.healthy and cluster.dead_reason is None
            first, second = cluster.instances
            first.engine.restart_limit = second.engine.restart_limit = 0  # stay down
            first.engine._on_dead("test: core gone")
            params = SamplingParams(temperature=0.0, max_tokens=2)
            outs = [o async for o in cluster.generate([5, 6], params, "x", output_kind=OutputKind.FINAL_ONLY)]
            assert outs[-1].finished and cluster.router.by_name["mixed1"].routed == 1  # type: ignore[union-attr]
            second.engine._on_dead("test: core gone too")
            assert not cluster.healthy
            assert "mixed0: test: core gone" in (cluster.dead_reason or "")
            with pytest.raises(EngineDeadError, match="no mixed instance is up"):
                async for _ in cluster.generate([5, 6], params, "y"):
                    pass
        finally:
            await cluster.shutdown()

    asyncio.run(run())
