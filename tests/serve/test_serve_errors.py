"""Bad input gets a 400 with an OpenAI-style error body, never a 500, and the server keeps serving."""

from __future__ import annotations

import json

import pytest

GOOD = {"prompt": "w3 w4", "max_tokens": 4, "temperature": 0}
GOOD_CHAT = {"messages": [{"role": "user", "content": "w3 w4"}], "max_tokens": 4}

BAD_COMPLETIONS = {
    "malformed json": '{"prompt": "w3", ',
    "not an object": "[1, 2]",
    "nan literal": '{"prompt": "w3", "temperature": NaN}',
    "no prompt": {"max_tokens": 4},
    "max_tokens a string": {"prompt": "w3", "max_tokens": "4"},
    "max_tokens a float": {"prompt": "w3", "max_tokens": 4.5},
    "max_tokens zero": {"prompt": "w3", "max_tokens": 0},
    "max_tokens beyond context": {"prompt": "w3 w4", "max_tokens": 600},
    "prompt a number": {"prompt": 3},
    "empty prompt": {"prompt": "  "},
    "token id outside vocab": {"prompt": [3, 99]},
    "two prompts": {"prompt": ["w3", "w4"]},
    "stream not a bool": {"prompt": "w3", "stream": "yes"},
    "temperature negative": {"prompt": "w3", "temperature": -0.5},
    "temperature a string": {"prompt": "w3", "temperature": "hot"},
    "top_p zero": {"prompt": "w3", "top_p": 0},
    "top_p above one": {"prompt": "w3", "top_p": 1.5},
    "top_k negative": {"prompt": "w3", "top_k": -1},
    "n two": {"prompt": "w3", "n": 2},
    "stop empty": {"prompt": "w3", "stop": ""},
    "stop a number": {"prompt": "w3", "stop": 5},
    "seed out of range": {"prompt": "w3", "seed": 2 ** 70},
    "seed a string": {"prompt": "w3", "seed": "1"},
    "tokenleap not an object": {"prompt": "w3", "tokenleap": "sps"},
    "unknown method": {"prompt": "w3", "tokenleap": {"method": "nope"}},
    "method not a string": {"prompt": "w3", "tokenleap": {"method": 3}},
    "unknown method option": {"prompt": "w3", "tokenleap": {"method": "sps", "gama": 3}},
    "option of another method": {"prompt": "w3", "tokenleap": {"method": "ar", "gamma": 3}},
    "option of the wrong type": {"prompt": "w3", "tokenleap": {"method": "sps", "gamma": "three"}},
    "option out of range": {"prompt": "w3", "tokenleap": {"method": "sps", "gamma": -1}},
    "logprobs": {"prompt": "w3", "logprobs": 2},
}

BAD_CHAT = {
    "no messages": {"max_tokens": 4},
    "empty messages": {"messages": []},
    "messages not a list": {"messages": "w3"},
    "message without role": {"messages": [{"content": "w3"}]},
    "content a number": {"messages": [{"role": "user", "content": 3}]},
    "image content": {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
    "empty content": {"messages": [{"role": "user", "content": ""}]},
    "max_completion_tokens beyond context": {"messages": [{"role": "user", "content": "w3"}],
                                             "max_completion_tokens": 10_000},
    "unknown method": {"messages": [{"role": "user", "content": "w3"}], "tokenleap": {"method": "nope"}},
    "temperature negative": {"messages": [{"role": "user", "content": "w3"}], "temperature": -1},
    "n two": {"messages": [{"role": "user", "content": "w3"}], "n": 2},
    "tools": {"messages": [{"role": "user", "content": "w3"}], "tools": [{"type": "function"}]},
}


def check_error(response, status: int = 400) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == ("invalid_request_error" if status == 400 else error["type"])
    return error


def post(http, path: str, body) -> object:
    content = body if isinstance(body, str) else json.dumps(body)
    return http.post(path, content=content, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize("body", BAD_COMPLETIONS.values(), ids=BAD_COMPLETIONS.keys())
def test_bad_completion_request(http, body):
    check_error(post(http, "/v1/completions", body))
    good = post(http, "/v1/completions", GOOD)
    assert good.status_code == 200 and good.json()["choices"][0]["text"]


@pytest.mark.parametrize("body", BAD_CHAT.values(), ids=BAD_CHAT.keys())
def test_bad_chat_request(http, body):
    check_error(post(http, "/v1/chat/completions", body))
    good = post(http, "/v1/chat/completions", GOOD_CHAT)
    assert good.status_code == 200 and good.json()["choices"][0]["message"]["content"]


def test_errors_name_the_parameter(http):
    cases = {"max_tokens": {"prompt": "w3 w4", "max_tokens": 600}, "temperature": {"prompt": "w3", "temperature": -1},
             "top_p": {"prompt": "w3", "top_p": 2}, "top_k": {"prompt": "w3", "top_k": -2},
             "tokenleap.method": {"prompt": "w3", "tokenleap": {"method": "nope"}},
             "tokenleap": {"prompt": "w3", "tokenleap": {"method": "sps", "gama": 1}}, "n": {"prompt": "w3", "n": 3}}
    for param, body in cases.items():
        assert check_error(post(http, "/v1/completions", body))["param"] == param
    error = check_error(post(http, "/v1/completions", {"prompt": "w3 w4", "max_tokens": 511}))
    assert error["code"] == "context_length_exceeded" and "512" in error["message"]
    assert post(http, "/v1/completions", {"prompt": "w3 w4", "max_tokens": 510, "temperature": 0}).status_code == 200


def test_chat_without_max_tokens_fills_the_context_at_most(http):
    # The tiny tokenizer has no chat template: the server joins the contents itself.
    out = post(http, "/v1/chat/completions", {"messages": [{"role": "user", "content": "w3 w4"}], "temperature": 0,
                                              "seed": 3})
    assert out.status_code == 200
    usage = out.json()["usage"]
    assert usage["total_tokens"] <= 512


def test_unknown_route_and_model(http):
    check_error(http.get("/v1/nothing"), 404)
    check_error(http.get("/v1/models/not-a-model"), 404)
    check_error(http.get("/v1/completions"), 405)
