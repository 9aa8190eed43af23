"""Every lossless method must reproduce greedy decoding token for token.

Each lossless method in tokenleap.METHODS needs an entry in OPTION_SETS; a new method without
one fails `test_every_lossless_method_is_covered`, so it inherits these tests."""

import dataclasses

import pytest

import tokenleap
from tokenleap import METHODS
from reference import hf_greedy
from tokenleap.models.llama import LlamaRunner

OPTION_SETS = {
    "ar": [{}],
    "sps": [{}, {"gamma": 1}, {"gamma": 3}, {"gamma": 6}, {"gamma": 5, "stop_below": 0.2}],
    # MTAD is not lossless, but at T=0 with tau < 1 it must equal greedy decoding (P7).
    "mtad": [{"gamma": 2, "beam_width": 1}, {"gamma": 4, "beam_width": 4, "tau": 0.5},
             {"gamma": 3, "beam_width": 3, "tau": 0.9, "without_replacement": True}],
    "mtad-tree": [{"gamma": 4, "beam_width": 4}, {"gamma": 2, "beam_width": 2, "tau": 0.1}],
    "pld": [{}, {"num_draft": 1, "max_ngram": 1}, {"num_draft": 4, "min_ngram": 2, "adaptive": False}],
    "pass": [{}, {"lookahead": 1, "embeddings": "zero", "scheme": "two-call"},
             {"lookahead": 2, "embeddings": "random", "scheme": "merged"},
             {"lookahead": 4, "scheme": "two-call"}, {"lookahead": 4, "embeddings": "mean", "scheme": "merged"},
             {"lookahead": 6, "embeddings": "random", "scheme": "two-call"},
             {"lookahead": 6, "embeddings": "zero", "scheme": "merged"},
             {"lookahead": 1, "embeddings": "zero", "candidates": 1},
             {"lookahead": 3, "embeddings": "random", "candidates": 3},
             {"lookahead": 2, "candidates": 4},
             {"lookahead": 1, "lookup": 4}, {"lookahead": 2, "candidates": 2, "lookup": 8}],
    # PPD on these 2-layer models: d = 1 = l/2; d < l/2 and deeper models are in test_ppd.py.
    "ppd": [{}, {"candidates": 1, "workers": 1}, {"exit_layer": 1, "candidates": 3, "workers": 2},
            {"candidates": 5, "workers": 1, "head": "shared"}, {"candidates": 2, "simulate": True}],
}
CASES = [(name, opts) for name, sets in OPTION_SETS.items() for opts in sets]
PROMPTS = ["w2 w3 w4", "w5", "w7 w8 w9 w10 w11 w12 w13"]


def test_every_lossless_method_is_covered():
    assert {n for n, s in METHODS.items() if s.lossless} <= set(OPTION_SETS)


def greedy(method, opts, target, draft, prompt, n):
    result = tokenleap.generate(prompt, method=method, model=target,
                                draft=draft if METHODS[method].needs_draft else None,
                                max_new_tokens=n, **opts)
    return result


@pytest.mark.parametrize("runner", ["lean", "hf"])
@pytest.mark.parametrize("method,opts", CASES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_equals_hf_generate_on_tiny_models(tiny, runner, method, opts, seed):
    target = tiny(runner=runner, vocab_size=32, seed=seed)
    unrelated = tiny(runner=runner, vocab_size=32, seed=seed + 100, num_layers=1)
    drafts = {"same": target, "unrelated": unrelated}
    if runner == "lean":
        # A draft with a reduced head (half the vocabulary) never proposes the other half.
        subset = list(range(0, 32, 2))
        drafts["reduced-head"] = dataclasses.replace(unrelated, runner=LlamaRunner(unrelated.hf_model, subset))
    for prompt in PROMPTS:
        expected = hf_greedy(target, target.encode(prompt), 24)
        for draft in drafts.values():
            got = greedy(method, opts, target, draft, prompt, 24)
            assert got.token_ids == expected, (prompt, got.stats.accepted_hist)


@pytest.mark.parametrize("method,opts", CASES)
def test_greedy_stops_at_eos_exactly(tiny, method, opts):
    target = tiny(vocab_size=32, seed=0)
    free_run = hf_greedy(target, target.encode("w2 w3"), 20)
    # Declare the 6th greedy token an EOS: every method must stop right after it.
    eos_target = dataclasses.replace(target, eos_token_ids=frozenset({free_run[5]}))
    draft = tiny(vocab_size=32, seed=7, num_layers=1)
    got = greedy(method, opts, eos_target, draft, "w2 w3", 20)
    assert got.token_ids == free_run[: free_run.index(free_run[5]) + 1]
    assert got.finish_reason == "eos"


@pytest.mark.parametrize("method,opts", CASES)
def test_max_new_tokens_is_exact(tiny, method, opts):
    target = tiny(vocab_size=32, seed=1)
    for n in (1, 2, 5):
        got = greedy(method, opts, target, target, "w4 w5", n)
        assert len(got.token_ids) == n and got.finish_reason == "length"


@pytest.mark.real_model
@pytest.mark.parametrize("method,opts", [("ar", {}), ("sps", {"gamma": 4}), ("pld", {}), ("pass", {}),
                                         ("pass", {"lookahead": 4, "scheme": "two-call"}),
                                         ("pass", {"lookahead": 6, "scheme": "merged"}),
                                         ("pass", {"lookahead": 2, "candidates": 3})])
def test_greedy_equals_hf_generate_on_default_model(real_fp32, method, opts):
    prompts = ["What is the capital of France?", "Write a Python function that reverses a string."]
    for prompt in prompts:
        expected = hf_greedy(real_fp32, real_fp32.encode(prompt), 40)
        got = greedy(method, opts, real_fp32, real_fp32, prompt, 40)
        assert got.token_ids == expected
