import math

import pytest
import torch

from tokenleap import Sampling, TokenleapError
from tokenleap.decoding import warping
from tokenleap.decoding.warping import _warp_few, next_token, sample, warp


def test_greedy_is_one_hot_at_argmax():
    logits = torch.tensor([[0.1, 3.0, -1.0, 2.9]])
    probs = warp(logits, Sampling(0.0))
    assert probs.tolist() == [[0.0, 1.0, 0.0, 0.0]]
    assert next_token(logits[0], Sampling(0.0), None).item() == 1


def test_temperature_scales_logits():
    logits = torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(warp(logits, Sampling(2.0)), (logits / 2).softmax(-1))


def test_top_k_keeps_exactly_k():
    logits = torch.tensor([5.0, 1.0, 4.0, 3.0, 2.0])
    probs = warp(logits, Sampling(1.0, top_k=2))
    assert (probs > 0).tolist() == [True, False, True, False, False]
    assert math.isclose(probs.sum().item(), 1.0, rel_tol=1e-6)


def test_top_p_keeps_the_nucleus():
    probs_in = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs_in.log()
    # 0.5 < 0.7, 0.5+0.3 >= 0.7: the nucleus is the two most likely tokens.
    assert (warp(logits, Sampling(1.0, top_p=0.7)) > 0).tolist() == [True, True, False, False]
    # The most likely token always survives even for a tiny top_p.
    assert (warp(logits, Sampling(1.0, top_p=1e-6)) > 0).tolist() == [True, False, False, False]
    assert torch.allclose(warp(logits, Sampling(1.0, top_p=1.0)), probs_in)


def test_top_k_then_top_p_matches_hf_warpers():
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    ref = logits.clone()
    for w in (TemperatureLogitsWarper(0.7), TopKLogitsWarper(10), TopPLogitsWarper(0.8)):
        ref = w(None, ref)
    assert torch.allclose(warp(logits, Sampling(0.7, top_k=10, top_p=0.8)), ref.softmax(-1), atol=1e-6)


def _hf_reference(logits, temperature, top_k, top_p):
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    if top_p < 1:
        ref = TopPLogitsWarper(top_p)(None, ref)
    return ref.softmax(-1)


@pytest.mark.parametrize("top_k,top_p", [(10, 1.0), (10, 0.9), (50, 0.5), (0, 0.9), (0, 0.99)])
@pytest.mark.parametrize("shape", ["peaked", "flat", "ties", "reduced_head"])
def test_shortcut_equals_the_full_path_and_hf_on_a_large_vocabulary(top_k, top_p, shape, monkeypatch):
    """warp() takes a partial top-k instead of a full sort when it can; it must give what the
    full path gives, and both HF's distribution. 'flat' makes the nucleus wider than the
    shortcut's candidates, 'ties' puts ties at the k-th logit, 'reduced_head' has -inf outside
    3000 tokens (a draft's head)."""
    torch.manual_seed(0)
    logits = torch.randn(3, 20000) * (8.0 if shape == "peaked" else 0.3 if shape == "flat" else 3.0)
    if shape == "ties":
        logits = logits.round()  # many equal values, at the k-th one too
    if shape == "reduced_head":
        logits[:, 3000:] = -math.inf
    sampling = Sampling(0.8, top_k=top_k, top_p=top_p)
    got = warp(logits, sampling)
    monkeypatch.setattr(warping, "_warp_few", lambda *_: None)
    full = warp(logits, sampling)
    if shape == "ties":
        # Which of several equal tokens a cut keeps is arbitrary (sort order), and HF's nucleus
        # boundary rule differs from ours on exact ties: compare sorted, with our full path.
        assert torch.allclose(got.sort(-1).values, full.sort(-1).values, atol=1e-6)
    else:
        assert torch.allclose(got, full, atol=1e-6)
        assert torch.allclose(full, _hf_reference(logits, 0.8, top_k, top_p), atol=1e-6)
    assert torch.allclose(got.sum(-1), torch.ones(3), atol=1e-5)


def test_shortcut_is_taken_when_it_is_exact_and_only_then():
    torch.manual_seed(0)
    peaked = torch.randn(2, 20000) * 8
    assert _warp_few(peaked, Sampling(1.0, top_k=10, top_p=0.9)) is not None
    assert _warp_few(peaked, Sampling(1.0, top_p=0.9)) is not None
    assert _warp_few(peaked.round(), Sampling(1.0, top_k=10)) is not None  # a few ties: still exact
    many_ties = torch.zeros(2, 20000)
    many_ties[:, :5] = 1.0  # 19995 tokens tie for the 10th place
    assert _warp_few(many_ties, Sampling(1.0, top_k=10)) is None
    assert _warp_few(torch.randn(2, 20000) * 0.3, Sampling(1.0, top_p=0.9)) is None  # wide nucleus


def test_sample_follows_probs_and_is_seeded():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    draws = sample(probs.expand(20000, 4), torch.Generator().manual_seed(1))
    freq = torch.bincount(draws, minlength=4).float() / 20000
    assert freq[1] == 0
    assert torch.allclose(freq, probs, atol=0.015)
    again = sample(probs.expand(20000, 4), torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)


@pytest.mark.parametrize("kwargs", [dict(temperature=-0.1), dict(top_p=0.0), dict(top_p=1.5),
                                    dict(top_k=-1), dict(temperature=float("nan"))])
def test_invalid_sampling_parameters(kwargs):
    with pytest.raises(TokenleapError):
        Sampling(**kwargs)
