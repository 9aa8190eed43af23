"""Exact output laws of tiny-vocabulary models by enumeration, and a chi-square check against them."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import chisquare

import tokenleap
from tokenleap import Sampling
from tokenleap.decoding.warping import warp


def exact_law(model: tokenleap.Model, prompt_ids: list[int], n_tokens: int, sampling: Sampling,
              prefix: tuple[int, ...] = ()) -> dict[tuple[int, ...], float]:
    """P(x1..xn | prompt) under the warped target, by enumeration; a sequence ends early at EOS."""
    if len(prefix) == n_tokens or (prefix and prefix[-1] in model.eos_token_ids):
        return {prefix: 1.0}
    with torch.inference_mode():
        logits = model.hf_model(torch.tensor([prompt_ids + list(prefix)])).logits[0, -1]
    probs = warp(logits, sampling)
    law = {}
    for token in torch.nonzero(probs).flatten().tolist():
        for seq, p in exact_law(model, prompt_ids, n_tokens, sampling, prefix + (token,)).items():
            law[seq] = probs[token].item() * p
    return law


def chi_square_pvalue(samples: list[tuple[int, ...]], law: dict[tuple[int, ...], float]) -> float:
    """p-value of the samples under `law` (rare cells pooled); 0 when a sample is impossible."""
    n = len(samples)
    if not set(samples) <= set(law):
        return 0.0  # a sequence the law cannot produce: certainly not this law
    cells = sorted(law, key=law.get, reverse=True)
    expected = np.array([law[c] * n for c in cells])
    observed = np.array([samples.count(c) for c in cells], dtype=float)
    # Pool the rare cells so every bin expects at least 5 draws.
    big = expected >= 5
    exp_b = np.append(expected[big], expected[~big].sum())
    obs_b = np.append(observed[big], observed[~big].sum())
    if exp_b[-1] == 0:
        exp_b, obs_b = exp_b[:-1], obs_b[:-1]
    return chisquare(obs_b, exp_b * n / exp_b.sum()).pvalue


def draws(method: str, target, draft, sampling: Sampling, n: int, prompt: str = "w2 w3", max_new_tokens: int = 2,
          **opts) -> list[tuple[int, ...]]:
    """n generations with seeds 0..n-1, as token tuples."""
    out = []
    for seed in range(n):
        r = tokenleap.generate(prompt, method=method, model=target, draft=draft, max_new_tokens=max_new_tokens,
                               temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                               seed=seed, **opts)
        out.append(tuple(r.token_ids))
    return out
