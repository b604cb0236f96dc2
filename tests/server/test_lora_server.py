"""LoRA adapters on the server, in vLLM's conventions, driven by the official ``openai`` client:
``model`` = adapter name selects it (PEFT's greedy text), ``/v1/models`` lists adapters, adapters
load and unload at run time, and bad adapters or unknown names are OpenAI error bodies while the
server keeps serving."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from edgecloud.llm import SamplingParams
from edgecloud.llm.config import EngineConfig
from edgecloud.llm.engine import LLMEngine

from ..llm.peft_adapters import FIVE, PeftReference, write_adapter
from .conftest import ServerProcess, start_server

PROMPT = [5, 17, 33, 90, 41, 7]


@pytest.fixture(scope="module")
def adapter_dirs(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("server-adapters")
    return {spec.name: write_adapter(model_dir, root / spec.name, spec, seed=i) for i, spec in enumerate(FIVE[:3])}


@pytest.fixture(scope="module")
def lora_server(model_dir: Path, adapter_dirs: dict[str, Path],
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(
        model_dir, tmp_path_factory.mktemp("lora-server-log") / "server.log", "--dtype", "float32",
        "--lora-modules", f"r2={adapter_dirs['r2-qv']}", f"r4={adapter_dirs['r4-all']}", "--max-lora-rank", "8",
        "--max-loras", "2",
    )
    yield process
    assert process.stop() == 0, process.log_path.read_text()


@pytest.fixture(scope="module")
def client(lora_server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{lora_server.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def greedy_text(client: openai.OpenAI, model: str) -> str:
    return greedy(client, model)[0]


def greedy(client: openai.OpenAI, model: str) -> tuple[str, list[float]]:
    reply = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=0,
                                      extra_body={"ignore_eos": True})
    assert reply.model == model
    choice = reply.choices[0]
    return choice.text, choice.logprobs.token_logprobs


def test_model_names_the_adapter_and_answers_are_pefts(
    client: openai.OpenAI, lora_server: ServerProcess, model_dir: Path, adapter_dirs: dict[str, Path]
) -> None:
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {lora_server.model, "r2", "r4"}
    assert models["r4"].model_extra["parent"] == lora_server.model
    assert models["r4"].model_extra["root"] == str(adapter_dirs["r4-all"])
    # the offline engine with the same adapters gives PEFT's tokens; the server answers with its
    # text and logprobs (the random model's tokenizer decodes many ids to nothing: logprobs tell)
    ref = PeftReference(model_dir)
    engine = LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", num_threads=1, max_lora_rank=8,
                                    lora_modules=(("r2", str(adapter_dirs["r2-qv"])),
                                                  ("r4", str(adapter_dirs["r4-all"])))))
    outputs = set()
    for name, directory in (("r2", adapter_dirs["r2-qv"]), ("r4", adapter_dirs["r4-all"]), (lora_server.model, None)):
        adapter = None if directory is None else name
        engine.add_request(name, PROMPT, SamplingParams(temperature=0, max_tokens=6, logprobs=0, ignore_eos=True),
                           adapter_id=adapter)
        while engine.has_unfinished():
            done = [o for o in engine.step() if o.finished]
        offline = done[0].outputs[0]
        assert offline.token_ids == ref.greedy(directory, PROMPT, 6)
        text, logprobs = greedy(client, name)
        assert text == offline.text
        assert logprobs == pytest.approx([lp.logprob for lp in offline.logprobs], abs=1e-4)
        outputs.add(tuple(offline.token_ids))
    assert len(outputs) == 3


def test_unknown_adapter_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-adapter", messages=[{"role": "user", "content": "hi"}])
    error = info.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "no-such-adapter" in error["message"]


def test_load_and_unload_at_run_time(
    client: openai.OpenAI, lora_server: ServerProcess, adapter_dirs: dict[str, Path], tmp_path: Path
) -> None:
    url = lora_server.base_url
    load = {"lora_name": "r8", "lora_path": str(adapter_dirs["r8-mlp"])}
    reply = httpx.post(f"{url}/v1/load_lora_adapter", json=load, timeout=60)
    assert reply.status_code == 200 and "added successfully" in reply.text
    assert "r8" in {m.id for m in client.models.list().data}
    first = greedy_text(client, "r8")
    again = httpx.post(f"{url}/v1/load_lora_adapter", json=load, timeout=60)
    assert again.status_code == 400 and again.json()["error"]["code"] == "adapter_already_loaded"

    # bad adapters: clear 400s naming the field, and the server keeps serving
    big = {"lora_name": "r16", "lora_path": str(adapter_dirs["r8-mlp"]).replace("r8-mlp", "missing")}
    missing = httpx.post(f"{url}/v1/load_lora_adapter", json=big, timeout=60).json()["error"]
    assert missing["param"] == "lora_path" and "is not a directory" in missing["message"]
    corrupt = shutil.copytree(adapter_dirs["r2-qv"], tmp_path / "corrupt")
    (corrupt / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    bad = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "c", "lora_path": str(corrupt)}, timeout=60)
    assert bad.status_code == 400 and "not a readable safetensors file" in bad.json()["error"]["message"]
    empty = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "c"}, timeout=60)
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "lora_path"
    assert greedy_text(client, "r8") == first

    gone = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "r8"}, timeout=60)
    assert gone.status_code == 200 and "removed successfully" in gone.text
    with pytest.raises(openai.NotFoundError):
        greedy_text(client, "r8")
    twice = httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": "r8"}, timeout=60)
    assert twice.status_code == 404 and twice.json()["error"]["code"] == "model_not_found"
    assert len(greedy(client, "r2")[1]) == 6  # the others still serve (6 tokens; the text may be empty)


def test_rank_above_the_maximum_is_refused(lora_server: ServerProcess, model_dir: Path, tmp_path: Path) -> None:
    spec = FIVE[3]  # rank 16, the server allows 8
    path = write_adapter(model_dir, tmp_path / "r16", spec, seed=9)
    body = {"lora_name": "r16", "lora_path": str(path)}
    reply = httpx.post(f"{lora_server.base_url}/v1/load_lora_adapter", json=body, timeout=60)
    assert reply.status_code == 400
    assert "above this engine's max_lora_rank=8" in reply.json()["error"]["message"]
