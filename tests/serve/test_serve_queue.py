"""One model, one worker: a full queue answers 429; a client that leaves frees its slot at once."""

from __future__ import annotations

import dataclasses
import time

import httpx
import openai
import pytest
from serve_helpers import SlowRunner, metrics, running_server, wait_until

import tokenleap
from tokenleap.serve import create_app

LONG = {"prompt": "w3 w4", "max_tokens": 300, "temperature": 0, "stream": True}  # ~6 s on the slow server
SHORT = {"prompt": "w3 w4", "max_tokens": 3, "temperature": 0}


def first_event(lines) -> str:
    """The first SSE event from `lines` (keep that iterator referenced: dropping it closes the
    connection, which the server rightly takes for a client that left)."""
    for line in lines:
        if line.startswith("data: "):
            return line
    raise AssertionError("the stream ended without an event")


def in_flight(client: httpx.Client) -> int:
    return client.get("/health").json()["in_flight"]


def test_full_queue_answers_429(slow_server_url):
    with httpx.Client(base_url=slow_server_url, timeout=30) as a, httpx.Client(base_url=slow_server_url,
                                                                                timeout=30) as b:
        with a.stream("POST", "/v1/completions", json=LONG) as running:
            assert running.status_code == 200
            lines = running.iter_lines()
            first_event(lines)
            busy = b.post("/v1/completions", json=SHORT)
            assert busy.status_code == 429
            error = busy.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["code"] == "queue_full"
            assert busy.headers["retry-after"] == "1"
            assert b.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "w3"}],
                                                        "stream": True}).status_code == 429
            with openai.OpenAI(base_url=slow_server_url + "/v1", api_key="unused", max_retries=0) as client:
                with pytest.raises(openai.RateLimitError):
                    client.completions.create(model="m", prompt="w3", max_tokens=2)
        assert wait_until(lambda: in_flight(b) == 0, timeout=3)
        assert b.post("/v1/completions", json=SHORT).status_code == 200
        assert metrics(b)["tokenleap_queue_rejections_total"] >= 3


def test_stream_disconnect_cancels_generation(slow_server_url):
    with httpx.Client(base_url=slow_server_url, timeout=30) as h:
        before = metrics(h)
        start = time.monotonic()
        client = httpx.Client(base_url=slow_server_url, timeout=30)
        chat = {"messages": [{"role": "user", "content": "w3 w4"}], "max_tokens": 300, "temperature": 0,
                "stream": True, "tokenleap": {"method": "sps", "gamma": 2}}
        with client.stream("POST", "/v1/chat/completions", json=chat) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first_event(lines)
            assert in_flight(h) == 1
        client.close()  # the client goes away mid-stream
        assert wait_until(lambda: in_flight(h) == 0, timeout=3)
        assert time.monotonic() - start < 4  # well before the 300 tokens (about 6 s) would be done
        after = metrics(h)
        cancelled = 'tokenleap_generations_cancelled_total{method="sps"}'
        assert after[cancelled] == before.get(cancelled, 0) + 1
        left = 'tokenleap_requests_total{endpoint="chat.completions",method="sps",status="499"}'
        assert after[left] == before.get(left, 0) + 1
        forwards = 'tokenleap_target_forwards_total{method="sps"}'
        assert after[forwards] - before.get(forwards, 0) < 150
        out = h.post("/v1/completions", json=SHORT)
        assert out.status_code == 200 and out.json()["usage"]["completion_tokens"] == 3


def test_non_streaming_disconnect_cancels_generation(slow_server_url):
    with httpx.Client(base_url=slow_server_url, timeout=30) as h:
        before = metrics(h)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(slow_server_url + "/v1/completions", json={**LONG, "stream": False}, timeout=0.5)
        assert wait_until(lambda: in_flight(h) == 0, timeout=3)
        after = metrics(h)
        left = 'tokenleap_requests_total{endpoint="completions",method="ar",status="499"}'
        assert after[left] == before.get(left, 0) + 1
        assert h.post("/v1/completions", json=SHORT).status_code == 200


@pytest.fixture(scope="module")
def queue2_url(tiny_dir):
    target = tokenleap.load_model(tiny_dir(vocab_size=32, seed=0), dtype="fp32")
    slow = dataclasses.replace(target, runner=SlowRunner(target.runner, 0.02), eos_token_ids=frozenset())
    with running_server(create_app(slow, None, default_method="ar", queue_size=2)) as url:
        yield url


def test_waiting_client_that_leaves_frees_its_slot(queue2_url):
    with httpx.Client(base_url=queue2_url, timeout=30) as h, httpx.Client(base_url=queue2_url, timeout=30) as a:
        with a.stream("POST", "/v1/completions", json=LONG) as running:
            lines = running.iter_lines()
            first_event(lines)
            waiting_client = httpx.Client(base_url=queue2_url, timeout=30)
            chat = {"messages": [{"role": "user", "content": "w3"}], "max_tokens": 5, "stream": True}
            with waiting_client.stream("POST", "/v1/chat/completions", json=chat) as waiting:
                waiting_lines = waiting.iter_lines()
                first_event(waiting_lines)  # the role chunk: sent before the generation starts
                assert in_flight(h) == 2
                assert h.post("/v1/completions", json=SHORT).status_code == 429
            waiting_client.close()
            assert wait_until(lambda: in_flight(h) == 1, timeout=2)  # freed while the first still runs
            # sps needs a draft, and this server has none: a 400, not a crash.
            assert h.post("/v1/completions", json={**SHORT, "tokenleap": {"method": "sps"}}).status_code == 400
        assert wait_until(lambda: in_flight(h) == 0, timeout=3)
        assert h.post("/v1/completions", json=SHORT).status_code == 200
