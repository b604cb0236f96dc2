"""``EngineCoreActor.call``: a control operation run on the actor's core thread whose result stays in
Ray, so KV blocks exported by one actor reach another through the object store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecloud.llm import EngineConfig, InvalidRequestError, SamplingParams
from edgecloud.llm.engine import LLMEngine
from edgecloud.llm.messages import AddRequests, encode
from edgecloud.llm.model_source import resolve_model
from edgecloud.llm.ray_client import EngineCoreActor
from edgecloud.llm.request import EngineCoreRequest, KVTransferParams

ray = pytest.importorskip("ray", reason="ray is a dev dependency; without it the Ray backend cannot be tested")


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    except Exception as error:  # e.g. no shared memory in a sandbox
        pytest.skip(f"Ray cannot start here: {error}")
    yield
    ray.shutdown()  # this process's own local cluster only (never `ray stop`)


def test_blocks_go_from_one_actor_to_another_through_the_object_store(llama_dir: Path, local_ray: None) -> None:
    config = EngineConfig(model=str(llama_dir), dtype="float32", kv_cache_memory_mb=1, block_size=4)
    source = resolve_model(str(llama_dir))
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
