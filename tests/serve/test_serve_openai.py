"""The server driven by the real `openai` client: every method, completions and chat, streamed or not."""

from __future__ import annotations

import pytest
from openai import OpenAI
from serve_helpers import METHOD_OPTIONS, metrics

import tokenleap

PROMPT = "w3 w4 w5 w6"
MESSAGES = [{"role": "system", "content": "w7 w8"}, {"role": "user", "content": "w3 w4 w5"}]
N = 12


@pytest.fixture(scope="module")
def client(server_url):
    with OpenAI(base_url=server_url + "/v1", api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def served_name(client) -> str:
    return client.models.list().data[0].id


def body(method: str) -> dict:
    return {"tokenleap": {"method": method, **METHOD_OPTIONS.get(method, {})}}


def check_usage(usage, method: str, completion_tokens: int) -> None:
    assert usage.completion_tokens == completion_tokens
    assert usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    extra = usage.model_extra
    assert extra["mean_accepted_length"] >= 1.0
    if tokenleap.METHODS[method].needs_draft:
        assert 0.0 <= extra["acceptance_rate"] <= 1.0
    if method == "ar":
        assert extra["mean_accepted_length"] == 1.0 and extra["acceptance_rate"] is None


def test_models(client, serve_models):
    models = client.models.list().data
    assert [m.id for m in models] == [serve_models[0].name]
    assert client.models.retrieve(models[0].id).id == models[0].id


@pytest.fixture(scope="module")
def greedy_ar(client):
    """Greedy AR outputs: every lossless method must reproduce them exactly."""
    name = served_name(client)
    completion = client.completions.create(model=name, prompt=PROMPT, max_tokens=N, temperature=0,
                                           extra_body=body("ar"))
    chat = client.chat.completions.create(model=name, messages=MESSAGES, max_tokens=N, temperature=0,
                                          extra_body=body("ar"))
    return completion.choices[0].text, chat.choices[0].message.content


@pytest.mark.parametrize("method", list(tokenleap.METHODS))
def test_completions(client, greedy_ar, method):
    name = served_name(client)
    out = client.completions.create(model=name, prompt=PROMPT, max_tokens=N, temperature=0, seed=1,
                                    extra_body=body(method))
    assert out.object == "text_completion" and out.model == name and len(out.choices) == 1
    choice = out.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.text
    check_usage(out.usage, method, out.usage.completion_tokens)
    assert out.usage.completion_tokens <= N
    if tokenleap.METHODS[method].lossless:
        assert choice.text == greedy_ar[0]

    pieces, finish = [], None
    stream = client.completions.create(model=name, prompt=PROMPT, max_tokens=N, temperature=0, seed=1, stream=True,
                                       stream_options={"include_usage": True}, extra_body=body(method))
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            pieces.append(c.text)
            finish = c.finish_reason or finish
    assert "".join(pieces) == choice.text
    assert finish == choice.finish_reason
    check_usage(usage, method, out.usage.completion_tokens)


@pytest.mark.parametrize("method", list(tokenleap.METHODS))
def test_chat(client, greedy_ar, method):
    name = served_name(client)
    out = client.chat.completions.create(model=name, messages=MESSAGES, max_completion_tokens=N, temperature=0,
                                         extra_body=body(method))
    assert out.object == "chat.completion"
    message = out.choices[0].message
    assert message.role == "assistant" and message.content
    check_usage(out.usage, method, out.usage.completion_tokens)
    if tokenleap.METHODS[method].lossless:
        assert message.content == greedy_ar[1]

    roles, pieces, finish = [], [], None
    for chunk in client.chat.completions.create(model=name, messages=MESSAGES, max_tokens=N, temperature=0,
                                                stream=True, extra_body=body(method)):
        assert chunk.object == "chat.completion.chunk"
        for c in chunk.choices:
            roles.append(c.delta.role)
            pieces.append(c.delta.content or "")
            finish = c.finish_reason or finish
    assert roles[0] == "assistant"
    assert "".join(pieces) == message.content
    assert finish == out.choices[0].finish_reason


def test_sampling_is_seeded(client):
    """Without temperature the OpenAI default (1.0) samples; the same seed gives the same text."""
    name = served_name(client)
    texts = [client.completions.create(model=name, prompt=PROMPT, max_tokens=N, seed=s).choices[0].text
             for s in (7, 7, 8)]
    assert texts[0] == texts[1]
    sps = client.completions.create(model=name, prompt=PROMPT, max_tokens=N, seed=7, top_p=0.9,
                                    extra_body={"top_k": 5, **body("sps")})
    assert sps.choices[0].text


def test_stop_strings(client, greedy_ar):
    name = served_name(client)
    words = greedy_ar[0].split()
    stop = words[3]
    out = client.completions.create(model=name, prompt=PROMPT, max_tokens=N, temperature=0, stop=[stop, "w999"])
    assert out.choices[0].finish_reason == "stop"
    assert stop not in out.choices[0].text
    assert greedy_ar[0].startswith(out.choices[0].text)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=name, prompt=PROMPT, max_tokens=N, temperature=0, stop=stop, stream=True) if c.choices)
    assert streamed == out.choices[0].text


def test_metrics_count_generations(client, http):
    before = metrics(http)
    key = 'tokenleap_requests_total{endpoint="completions",method="sps",status="200"}'
    out = client.completions.create(model=served_name(client), prompt=PROMPT, max_tokens=N, temperature=0,
                                    extra_body=body("sps"))
    after = metrics(http)
    assert after[key] == before.get(key, 0) + 1
    gen = 'tokenleap_generated_tokens_total{method="sps"}'
    assert after[gen] - before.get(gen, 0) == out.usage.completion_tokens
    proposed = 'tokenleap_draft_tokens_proposed_total{method="sps"}'
    accepted = 'tokenleap_draft_tokens_accepted_total{method="sps"}'
    assert after[proposed] > before.get(proposed, 0)
    assert after[accepted] - before.get(accepted, 0) <= after[proposed] - before.get(proposed, 0)
    assert after["process_resident_memory_bytes"] > 0
    assert after['tokenleap_request_duration_seconds_count{endpoint="completions"}'] > 0
    assert http.get("/health").json()["status"] == "ok"
