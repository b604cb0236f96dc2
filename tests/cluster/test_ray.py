"""The cluster with ``--backend ray`` on a local Ray cluster started in this process (never `ray
stop`): instances are Ray actors, P/D hand-overs go through Ray's object store (the engine's
``EngineCoreActor.call``, tested here first), and an actor that is killed is taken out of rotation
as soon as Ray reports it dead, while its stream fails and the others keep serving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from edgecloud.cluster.config import InstanceSpec
from edgecloud.cluster.main import ClusterSettings, build_cluster, build_router_app
from edgecloud.llm import InvalidRequestError, LLMEngine, SamplingParams
from edgecloud.llm.messages import AddRequests, encode
from edgecloud.llm.model_source import resolve_model
from edgecloud.llm.ray_client import EngineCoreActor
from edgecloud.llm.request import EngineCoreRequest, KVTransferParams
from edgecloud.server.app import ServerSettings
from edgecloud.server.main import bind
from tests.cluster.conftest import BLOCK_BYTES, engine_config
from tests.conftest import local_ray_cluster

ray = pytest.importorskip("ray", reason="ray is a dev dependency; without it the Ray backend cannot be tested")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    with local_ray_cluster(3):  # tests/conftest.py: without Ray's memory monitor, put back after
        yield


@pytest.mark.bench  # two more actors (~17 s here); the cluster test below covers the path end to end
def test_blocks_go_from_one_actor_to_another_through_the_object_store(demo_dir: Path, local_ray: None) -> None:
    config = engine_config(demo_dir)
    source = resolve_model(str(demo_dir))
    actor = ray.remote(num_cpus=0.5, max_concurrency=4)(EngineCoreActor)
    sender, receiver = actor.remote(config, source), actor.remote(config, source)
    prompt = list(range(3, 21))  # 18 tokens: 4 full blocks
    keys = ray.get(sender.call.remote("block_keys", {"token_ids": prompt}))
    assert len(keys) == 4
    assert ray.get(sender.call.remote("lookup", {"token_ids": prompt})) == 0
    # Prefill on the sender by hand: the core thread steps it; the call waits for the step to end.
    req = EngineCoreRequest(request_id="p", prompt_token_ids=prompt, arrival_time=0.0,
                            params=SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True),
                            kv_transfer=KVTransferParams(export=True))
    sender.send.remote(0, encode(AddRequests([req])))  # the actor's message path, as RayClient sends
    for _ in range(200):
        if ray.get(sender.call.remote("lookup", {"token_ids": prompt})) == 16:
            break
    exported = sender.call.remote("export_blocks", {"keys": keys})
    assert ray.get(receiver.call.remote("import_blocks", exported)) == 4
    assert ray.get(receiver.call.remote("lookup", {"token_ids": prompt})) == 16
    assert ray.get(receiver.call.remote("import_blocks", exported)) == 0  # already cached: nothing written
    with pytest.raises(ray.exceptions.RayTaskError) as error:
        ray.get(receiver.call.remote("no_such_op", {}))
    assert isinstance(error.value.cause, InvalidRequestError)
    # What travelled is the K/V an engine of its own computes for that prompt.
    offline = LLMEngine(config)
    offline.add_request("o", prompt, SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True))
    while offline.has_unfinished():
        offline.step()
    local = offline.core.control("export_blocks", {"keys": keys})
    payload = ray.get(exported)
    assert payload["k"].equal(local["k"]) and payload["v"].equal(local["v"])
    for handle in (sender, receiver):
        ray.kill(handle)


def reference(model: Path, prompt: list[int], max_tokens: int) -> str:
    engine = LLMEngine(engine_config(model))
    engine.add_request("r", prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True))
    out = []
    while engine.has_unfinished():
        out = engine.step()
    return out[0].outputs[0].text


# The router learns of a killed actor from Ray (its pending call fails with ActorDiedError), an event:
# milliseconds to a second or so. A regression is an actor that stays in rotation for ever, so the
# bound only has to be finite; it is generous, far above a loaded machine's scheduling delays (2 s
# failed at load 130).
KILLED_ACTOR_OUT_WITHIN_S = 10.0


# real_clock: "out of rotation, not for ever" needs an upper bound on the wall clock (generous: see above)
@pytest.mark.real_clock
def test_a_ray_cluster_hands_kv_over_through_the_object_store_and_survives_a_killed_actor(
    demo_dir: Path, local_ray: None,
) -> None:
    config = engine_config(demo_dir)
    specs = [InstanceSpec("prefill0", config, "prefill"), InstanceSpec("decode0", config, "decode"),
             InstanceSpec("decode1", config, "decode")]
    settings = ClusterSettings(backend="ray", policy="pd", policy_options={"decode": "round-robin"})
    cluster = build_cluster(specs, settings)
    assert cluster.connector.name == "ray"
    prompt = list(range(5, 42))  # 37 tokens: 9 full blocks of 4
    want = reference(demo_dir, prompt, 8)

    async def run() -> None:
        app = build_router_app(cluster, ServerSettings(log_level="warning"))
        sock = bind("127.0.0.1", 0)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        for _ in range(1200):
            if server.started or serving.done():
                break
            await asyncio.sleep(0.1)
        assert server.started, "the router did not start"
        base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        async with httpx.AsyncClient(base_url=base, timeout=120) as client:
            model = (await client.get("/v1/models")).json()["data"][0]["id"]
            body = {"model": model, "prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True}
            answer = (await client.post("/v1/completions", json=body)).json()
            assert answer["choices"][0]["text"] == want  # prefilled on prefill0, decoded on decode0
            handover = cluster.handovers[-1]
            assert (handover.decode_instance, handover.transfer.blocks, handover.transfer.sent) == ("decode0", 9, 9)
            assert handover.transfer.bytes == 9 * BLOCK_BYTES
            texts = [(await client.post("/v1/completions", json=body)).json()["choices"][0]["text"] for _ in range(2)]
            assert texts == [want, want]  # decode1, then decode0 again (the blocks already there)
            assert cluster.handovers[-1].transfer.sent == 0 and cluster.handovers[-1].transfer.skipped == 9

            # A long stream on each decode instance; then decode0's actor is killed.
            events: dict[str, list[str]] = {"decode1": [], "decode0": []}

            async def stream(name: str) -> None:
                long = {"model": model, "prompt": [5, 6, 7], "max_tokens": 120, "temperature": 0, "ignore_eos": True,
                        "stream": True}
                async with client.stream("POST", "/v1/completions", json=long) as response:
                    async for line in response.aiter_lines():
                        if line.startswith("data:"):
                            events[name].append(line)

            tasks = [asyncio.ensure_future(stream("decode1")), asyncio.ensure_future(stream("decode0"))]
            while min(len(e) for e in events.values()) < 3:
                await asyncio.sleep(0.05)
            victim = cluster.router.by_name["decode0"]  # type: ignore[union-attr]
            assert victim.outstanding == 1
            ray.kill(cluster.instances[1].ray_actor)
            killed = time.monotonic()
            while victim.healthy:
                assert time.monotonic() - killed < KILLED_ACTOR_OUT_WITHIN_S, (
                    f"the router still counted the killed actor healthy after {KILLED_ACTOR_OUT_WITHIN_S} s")
                await asyncio.sleep(0.02)
            after = [(await client.post("/v1/completions", json=body)).status_code for _ in range(3)]
            assert after == [200, 200, 200]
            await asyncio.wait_for(asyncio.gather(*tasks), 120)
            assert any('"error"' in e for e in events["decode0"]) and events["decode0"][-1] == "data: [DONE]"
            assert not any('"error"' in e for e in events["decode1"])
            assert sum(1 for e in events["decode1"] if '"text"' in e) == 120
            assert cluster.router.by_name["decode1"].routed >= 4  # type: ignore[union-attr]
        server.should_exit = True
        await serving

    asyncio.run(run())

