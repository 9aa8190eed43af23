"""The request planner: one set of rules for generate, the bench and the server."""

import pytest

import tokenleap
from tokenleap import TokenleapError
from tokenleap.planner import RequestError, plan_generation
from tokenleap.serve.app import ApiError, Server
from tokenleap.serve.schemas import CompletionRequest

GREEDY = dict(temperature=0.0, top_k=0, top_p=1.0)


def plan(model, **kwargs):
    return plan_generation(**{"prompt": "w2 w3", "method": "ar", "model": model, "max_new_tokens": 4, "seed": 0,
                              **GREEDY, **kwargs})


def test_parameters_are_keyword_only(tiny):
    with pytest.raises(TypeError):
        plan_generation("w2", "ar", tiny(vocab_size=32, seed=0), 4, 0.0, 0, 1.0, 0)


@pytest.mark.parametrize("kwargs, param, code", [
    (dict(top_p=2.0), "top_p", None), (dict(temperature=-1.0), "temperature", None), (dict(top_k=-1), "top_k", None),
    (dict(method="nope"), "method", "unknown_method"), (dict(options={"gamma": 2}), "options", None),
    (dict(seed=2 ** 64), "seed", None), (dict(seed=-(2 ** 63) - 1), "seed", None),
    (dict(max_new_tokens=0), "max_new_tokens", None), (dict(stop=[""]), "stop", None),
    (dict(method="sps"), "draft", None), (dict(prompt=[2, 999]), "prompt", None),
    (dict(prompt=" ".join(["w5"] * 16)), "prompt", "context_length_exceeded"),
    (dict(max_new_tokens=15, whole_output_in_context=True), "max_new_tokens", "context_length_exceeded"),
])
def test_errors_name_the_input_at_fault(tiny, kwargs, param, code):
    model = tiny(vocab_size=32, seed=0, max_position_embeddings=16)
    with pytest.raises(RequestError) as err:
        plan(model, **kwargs)
    assert (err.value.param, err.value.code) == (param, code)


def test_seed_range_ends_are_accepted(tiny):
    model = tiny(vocab_size=32, seed=0)
    for seed in (-(2 ** 63), 2 ** 64 - 1):
        assert plan(model, seed=seed).ctx.max_new_tokens == 4


def test_server_without_a_draft_refuses_draft_methods_with_generates_error(tiny):
    model = tiny(vocab_size=32, seed=0)
    with pytest.raises(TokenleapError) as from_generate:
        tokenleap.generate("w2 w3", method="sps", model=model)
    server = Server(model, None, "ar", queue_size=1)
    with pytest.raises(ApiError) as from_server:
        server.plan(CompletionRequest(prompt="w2 w3", tokenleap={"method": "sps"}), "completions")
    assert from_server.value.message == str(from_generate.value)
    assert from_server.value.param == "tokenleap.method"
