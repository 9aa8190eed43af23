"""`perplexity`: one full forward must agree with scoring the tokens one prefix at a time.
`law_pit` / `uniformity_pvalue`: uniform for draws from the law, not for draws from another."""

from __future__ import annotations

import math

import pytest
import torch

from tokenleap import TokenleapError
import tokenleap
from tokenleap import Sampling
from tokenleap.decoding.quality import law_pit, perplexity, score_continuation, uniformity_pvalue


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
    with pytest.raises(TokenleapError, match="at least one generated token"):
        law_pit(model, [3, 4], [], Sampling(1.0))
    with pytest.raises(TokenleapError, match="non-empty prompt"):
        perplexity(model, [], [3])


def test_uniformity_pvalue_agrees_with_scipy_and_reports_nans():
    from scipy.stats import kstest

    rng = torch.Generator().manual_seed(0)
    for n, power in [(40, 1.0), (300, 1.0), (300, 1.3), (3000, 1.0), (3000, 1.1)]:
        u = (torch.rand(n, generator=rng, dtype=torch.float64) ** power).tolist()
        p, nan = uniformity_pvalue(u)
        assert p == pytest.approx(kstest(u, "uniform").pvalue, abs=0.02) and nan == 0.0
    p, nan = uniformity_pvalue([0.5, float("nan"), 0.25, 0.75])
    assert nan == 0.25 and 0 < p <= 1


def test_law_pit_is_uniform_for_draws_from_the_law_and_not_for_a_colder_sampler(model):
    """Whole generations (not first tokens): ar at T=1 passes, ar at T=0.7 judged against the
    T=1 law fails: the check has power against 'favours likely tokens'."""
    law = Sampling(1.0, top_k=8, top_p=0.95)

    def pvalue(temperature: float) -> float:
        u = []
        for seed in range(40):
            r = tokenleap.generate([3, 4, 5], model=model, temperature=temperature, top_k=8, top_p=0.95,
                                   max_new_tokens=25, seed=seed)
            u += law_pit(model, r.prompt_ids, r.token_ids, law, torch.Generator().manual_seed(10_000 + seed)).tolist()
        return uniformity_pvalue(u)[0]

    assert pvalue(1.0) > 1e-3
    assert pvalue(0.7) < 1e-4


def test_score_continuation_is_perplexity_and_pit_in_one_forward(model):
    law = Sampling(1.0, top_k=5)
    ppl, pit = score_continuation(model, [3, 4], [5, 6, 7], law, torch.Generator().manual_seed(1))
    assert ppl == pytest.approx(perplexity(model, [3, 4], [5, 6, 7]))
    assert pit == pytest.approx(law_pit(model, [3, 4], [5, 6, 7], law, torch.Generator().manual_seed(1)).tolist(),
                                nan_ok=True)
    with pytest.raises(TokenleapError, match="temperature > 0"):
        law_pit(model, [3, 4], [5], Sampling(0.0))


def test_quantized_models_are_scored_with_their_own_weights(tiny_dir):
    """A quantized lean model keeps its original weights in the HF module; scoring must use the
    quantized ones (through the runner), and `reference=` puts the perplexity under another model."""
    from tokenleap.decoding.quality import top1_agreement

    path = tiny_dir(vocab_size=32, seed=4)
    plain = tokenleap.load_model(path, dtype="fp32")
    quant = tokenleap.load_model(path, dtype="fp32", quant="int4")
    ids = plain.encode("w2 w3 w4")
    answer = tokenleap.generate(ids, model=plain, max_new_tokens=16).token_ids
    assert top1_agreement(plain, ids, answer) == (len(answer), len(answer))  # its own greedy answer
    same, n = top1_agreement(quant, ids, answer)
    assert n == len(answer) and same < n  # int4 on a tiny random model disagrees somewhere
    sampling = Sampling(1.0)
    ppl_quant, _ = score_continuation(quant, ids, answer, sampling)
    ppl_ref, pit = score_continuation(quant, ids, answer, sampling, reference=plain)
    assert ppl_quant != ppl_ref and ppl_ref == pytest.approx(perplexity(plain, ids, answer), rel=1e-5)
    assert ppl_quant == pytest.approx(perplexity(quant, ids, answer), rel=1e-5) and len(pit) == len(answer)
