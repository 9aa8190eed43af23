"""Logits warping and sampling, shared by every method.

`warp` turns logits into the distribution a method samples from: temperature, then top-k,
then nucleus (top-p), then softmax. Temperature 0 means greedy: the distribution is a
one-hot at the argmax, so speculative acceptance rules stay correct unchanged (the
draft's one-hot is accepted exactly when it equals the target's argmax).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import TokenleapError


@dataclass(frozen=True)
class Sampling:
    """How logits become a distribution. temperature=0 is greedy decoding."""

    temperature: float = 0.0
    top_k: int = 0  # 0 = no top-k cut
    top_p: float = 1.0  # 1 = no nucleus cut

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or math.isnan(self.temperature) or self.temperature < 0:
            raise TokenleapError(f"temperature must be >= 0, got {self.temperature}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise TokenleapError(f"top_k must be an integer >= 0, got {self.top_k}")
        if not isinstance(self.top_p, (int, float)) or not (0.0 < self.top_p <= 1.0):
            raise TokenleapError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def warp(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """Probabilities (float32, last dim = vocabulary) after temperature, top-k and top-p."""
    logits = logits.float()
    if sampling.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / sampling.temperature
    if sampling.top_k or sampling.top_p < 1.0:
        probs = _warp_few(logits, sampling)
        if probs is not None:
            return probs
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass;
        # the most likely token is always kept.
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= sampling.top_p
        drop_sorted[..., 0] = False
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), -math.inf)
    return logits.softmax(-1)


NUCLEUS_CANDIDATES = 1024  # top-p alone: look for the nucleus among this many best tokens first
TIE_ROOM = 32  # top-k: extra candidates, so ties at the k-th logit (common in bf16) stay exact


def _warp_few(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor | None:
    """warp() for temperature-scaled logits when the cuts leave only a few tokens: the same
    distribution from a partial top-k (sorted) instead of sorting the whole vocabulary, which
    cost more than a draft forward at 49k tokens. None when that shortcut cannot be exact:
    more ties at the k-th logit than TIE_ROOM (the full path keeps them all) or a nucleus
    wider than the candidates."""
    vocab = logits.shape[-1]
    k = sampling.top_k + TIE_ROOM if sampling.top_k else NUCLEUS_CANDIDATES
    if k >= vocab:
        return None
    vals, ids = torch.topk(logits, k, dim=-1)
    if sampling.top_k:
        kept = vals >= vals[..., sampling.top_k - 1: sampling.top_k]  # the k best and their ties
        if bool(kept[..., -1].any()):
            return None
        vals = vals.masked_fill(~kept, -math.inf)
        log_norm = vals.logsumexp(-1, keepdim=True)  # top-p then works on the top-k distribution
    else:
        log_norm = logits.logsumexp(-1, keepdim=True)
    if sampling.top_p < 1.0:
        p = (vals - log_norm).exp()
        # Any token outside the candidates is dropped only if the candidates hold top_p.
        if not sampling.top_k and bool((p.sum(-1) < sampling.top_p).any()):
            return None
        drop = (p.cumsum(-1) - p) >= sampling.top_p  # the same rule as the full path
        drop[..., 0] = False
        vals = vals.masked_fill(drop, -math.inf)
    return torch.zeros_like(logits).scatter_(-1, ids, vals.softmax(-1))


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row of `probs` ([..., V] -> [...])."""
    flat = probs.reshape(-1, probs.shape[-1])
    # Inverse-CDF sampling: one uniform per row, reproducible under a seeded generator.
    # Uniforms come from the (CPU) generator on every device, so a seed means the same draws.
    u = torch.rand(flat.shape[0], 1, generator=generator, dtype=torch.float64).to(flat.device)
    cdf = flat.double().cumsum(-1)
    ids = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp_(max=flat.shape[-1] - 1)
    # Never land on a zero-probability token through float round-off at a boundary.
    bad = flat.gather(-1, ids) <= 0
    if bad.any():
        ids[bad] = flat[bad.squeeze(-1)].argmax(-1)
    return ids.reshape(probs.shape[:-1])


def pick(probs: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """Greedy argmax or a random draw from already-warped `probs`, as `sampling` says."""
    return probs.argmax(-1) if sampling.greedy else sample(probs, generator)


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """The token(s) to emit from raw logits: argmax when greedy, else a draw from warp()."""
    return logits.argmax(-1) if sampling.greedy else sample(warp(logits, sampling), generator)
