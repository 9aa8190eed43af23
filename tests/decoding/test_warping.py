import math

import pytest
import torch

from tokenleap import Sampling, TokenleapError
from tokenleap.decoding.warping import next_token, sample, warp


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
