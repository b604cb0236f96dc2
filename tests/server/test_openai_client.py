"""The server driven by the official ``openai`` client: answers equal the offline ``LLM`` API's
for the same requests, streamed or not."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from edgecloud.llm import LLM, RequestOutput, SamplingParams

from .conftest import OFFLINE_OPTIONS, ServerProcess

PROMPT = "Edge and cloud share the work of serving"


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def llm(model_dir: Path) -> LLM:
    return LLM(model=str(model_dir), **OFFLINE_OPTIONS)  # type: ignore[arg-type]


def offline(llm: LLM, prompt: str | list[int], **params: object) -> RequestOutput:
    return llm.generate([prompt], SamplingParams(**params))[0]  # type: ignore[arg-type]


def chat_ids(llm: LLM, messages: list[dict[str, str]]) -> list[int]:
    text = llm.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return llm.tokenizer.encode(text, add_special_tokens=False)


def test_completion_greedy_equals_offline(client: openai.OpenAI, server: ServerProcess, llm: LLM) -> None:
    reply = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=12, temperature=0)
    expected = offline(llm, PROMPT, max_tokens=12, temperature=0)
    assert reply.choices[0].text == expected.outputs[0].text
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(expected.prompt_token_ids), 12)
    assert reply.object == "text_completion" and reply.model == server.model


def test_completion_stream_equals_non_stream(client: openai.OpenAI, server: ServerProcess, llm: LLM) -> None:
    chunks = list(client.completions.create(
        model=server.model, prompt=PROMPT, max_tokens=20, temperature=0, stream=True,
        stream_options={"include_usage": True},
    ))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == offline(llm, PROMPT, max_tokens=20, temperature=0).outputs[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 20
    assert len({c.id for c in chunks}) == 1


def test_token_id_prompts_and_batches(client: openai.OpenAI, server: ServerProcess, llm: LLM) -> None:
    ids = llm.tokenizer.encode(PROMPT)
    other = llm.tokenizer.encode("Hello edge")
    reply = client.completions.create(model=server.model, prompt=[ids, other], max_tokens=6, temperature=0)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].text == offline(llm, ids, max_tokens=6, temperature=0).outputs[0].text
    assert reply.choices[1].text == offline(llm, other, max_tokens=6, temperature=0).outputs[0].text
    texts = client.completions.create(model=server.model, prompt=[PROMPT, "Hello edge"], max_tokens=6, temperature=0)
    assert [c.text for c in texts.choices] == [c.text for c in reply.choices]


def test_chat_greedy_equals_offline_streamed_or_not(client: openai.OpenAI, server: ServerProcess, llm: LLM) -> None:
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hello edge!"}]
    expected = offline(llm, chat_ids(llm, messages), max_tokens=10, temperature=0)
    reply = client.chat.completions.create(
        model=server.model, messages=messages, max_completion_tokens=10, temperature=0  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.content == expected.outputs[0].text
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None and reply.usage.prompt_tokens == len(expected.prompt_token_ids)
    stream = client.chat.completions.create(
        model=server.model, messages=messages, max_tokens=10, temperature=0, stream=True  # type: ignore[arg-type]
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.outputs[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_n_with_seed_is_reproducible_and_equals_offline(
    client: openai.OpenAI, server: ServerProcess, llm: LLM
) -> None:
    params = {"max_tokens": 8, "temperature": 0.9, "seed": 1234}
    first = client.completions.create(model=server.model, prompt=PROMPT, n=3, **params)  # type: ignore[arg-type]
    second = client.completions.create(model=server.model, prompt=PROMPT, n=3, **params)  # type: ignore[arg-type]
    texts = [c.text for c in sorted(first.choices, key=lambda c: c.index)]
    assert texts == [c.text for c in sorted(second.choices, key=lambda c: c.index)]
    assert len(set(texts)) > 1, "three seeded samples should not all agree"
    expected = offline(llm, PROMPT, n=3, **params)
    assert texts == [o.text for o in sorted(expected.outputs, key=lambda o: o.index)]
    assert first.usage is not None and first.usage.completion_tokens == 24


def test_stop_strings_cut_the_text_in_both_modes(client: openai.OpenAI, server: ServerProcess, llm: LLM) -> None:
    full = offline(llm, PROMPT, max_tokens=30, temperature=0).outputs[0].text
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = offline(llm, PROMPT, max_tokens=30, temperature=0, stop=[stop]).outputs[0]
    assert expected.finish_reason == "stop" and stop not in expected.text
    reply = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=30, temperature=0, stop=[stop])
    assert (reply.choices[0].text, reply.choices[0].finish_reason) == (expected.text, "stop")
    chunks = client.completions.create(
        model=server.model, prompt=PROMPT, max_tokens=30, temperature=0, stop=stop, stream=True
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.text


def test_completion_logprobs_equal_offline(client: openai.OpenAI, server: ServerProcess, llm: LLM) -> None:
    expected = offline(llm, PROMPT, max_tokens=5, temperature=0, logprobs=3).outputs[0]
    assert expected.logprobs is not None
    reply = client.completions.create(model=server.model, prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
    logprobs = reply.choices[0].logprobs
    assert logprobs is not None and logprobs.token_logprobs is not None and logprobs.top_logprobs is not None
    assert logprobs.token_logprobs == pytest.approx([e.logprob for e in expected.logprobs], abs=1e-5)
    # OpenAI's format keys the top tokens by text, so tokens that decode alike (byte pieces) merge.
    def text(token_id: int) -> str:
        return llm.tokenizer.decode([token_id], skip_special_tokens=False)

    expected_top = [{text(t): lp for t, lp in e.top} for e in expected.logprobs]
    assert [sorted(top) for top in logprobs.top_logprobs] == [sorted(top) for top in expected_top]
    assert "".join(logprobs.tokens or []) == reply.choices[0].text
    # Greedy: the sampled token is the most likely one.
    assert all(max(top.values()) == pytest.approx(lp) for top, lp in zip(logprobs.top_logprobs,
                                                                           logprobs.token_logprobs, strict=True))


def test_chat_logprobs_streamed(client: openai.OpenAI, server: ServerProcess, llm: LLM) -> None:
    messages = [{"role": "user", "content": "Hello"}]
    expected = offline(llm, chat_ids(llm, messages), max_tokens=6, temperature=0, logprobs=2).outputs[0]
    assert expected.logprobs is not None
    chunks = client.chat.completions.create(
        model=server.model, messages=messages, max_tokens=6, temperature=0,  # type: ignore[arg-type]
        logprobs=True, top_logprobs=2, stream=True,
    )
    entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content or []]
    assert [e.logprob for e in entries] == pytest.approx([e.logprob for e in expected.logprobs], abs=1e-5)
    assert all(len(e.top_logprobs) == 2 for e in entries)


def test_models_and_request_id(server: ServerProcess) -> None:
    import httpx

    models = httpx.get(f"{server.base_url}/v1/models").json()
    assert [m["id"] for m in models["data"]] == [server.model]
    reply = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"model": server.model, "prompt": "Hi", "max_tokens": 1},
        headers={"X-Request-Id": "trace-42"},
    )
    assert reply.headers["x-request-id"] == "trace-42"
    assert reply.json()["id"] == "cmpl-trace-42"
    generated = httpx.get(f"{server.base_url}/health").headers["x-request-id"]
    assert len(generated) == 32


def test_logit_bias_steers_the_sampled_token(client: openai.OpenAI, llm: LLM) -> None:
    forced = 77
    out = client.completions.create(model=client.models.list().data[0].id, prompt=PROMPT, max_tokens=5,
                                    temperature=0, logit_bias={str(forced): 100})
    assert out.choices[0].text == llm.tokenizer.decode([forced] * 5)
    want = offline(llm, PROMPT, temperature=0.0, max_tokens=5, logit_bias={forced: 100.0})
    assert out.choices[0].text == want.outputs[0].text


def test_flex_tier_and_cache_salt_answer_like_default(client: openai.OpenAI, llm: LLM) -> None:
    model = client.models.list().data[0].id
    want = offline(llm, PROMPT, temperature=0.0, max_tokens=6).outputs[0].text
    flex = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0,
                                     extra_body={"cache_salt": "tenant-a", "service_tier": "flex"})
    assert flex.choices[0].text == want
    chunks = list(client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0, stream=True,
        service_tier="flex",
    ))
    assert {c.service_tier for c in chunks} == {"flex"}
