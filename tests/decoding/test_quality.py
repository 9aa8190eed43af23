"""`perplexity`: one full forward must agree with scoring the tokens one prefix at a time."""

from __future__ import annotations

import math

import pytest
import torch

from tokenleap import TokenleapError
from tokenleap.decoding.quality import perplexity


@pytest.fixture
def model(tiny):
    return tiny(vocab_size=24, seed=3)  # the shared tiny-model loader of tests/conftest.py


def reference_perplexity(model, prompt_ids, token_ids):
    """The definition, spelled out: re-run the model on every prefix, untruncated softmax at T=1."""
    total = 0.0
    for i, token in enumerate(token_ids):
        prefix = torch.tensor([prompt_ids + token_ids[:i]])
        with torch.no_grad():
            logits = model.hf_model(input_ids=prefix).logits[0, -1].double()
        total += torch.log_softmax(logits, -1)[token].item()
    return math.exp(-total / len(token_ids))


def test_matches_prefix_by_prefix_definition(model):
    prompt, tokens = [5, 9, 2, 7], [3, 3, 11, 1, 20]
    assert perplexity(model, prompt, tokens) == pytest.approx(reference_perplexity(model, prompt, tokens), rel=1e-5)


def test_likely_tokens_score_lower_than_unlikely_ones(model):
    prompt = [4, 8, 15]
    with torch.no_grad():
        logits = model.hf_model(input_ids=torch.tensor([prompt])).logits[0, -1]
    best, worst = int(logits.argmax()), int(logits.argmin())
    assert 1.0 <= perplexity(model, prompt, [best]) < perplexity(model, prompt, [worst])
    assert perplexity(model, prompt, [best]) == pytest.approx(math.exp(-torch.log_softmax(logits, -1)[best].item()))


def test_needs_tokens_and_a_prompt(model):
    with pytest.raises(TokenleapError, match="at least one generated token"):
        perplexity(model, [3, 4], [])
    with pytest.raises(TokenleapError, match="non-empty prompt"):
        perplexity(model, [], [3])
