"""Speculative sampling with a draft model (Leviathan et al. 2023; Chen et al. 2023).

The draft proposes gamma tokens one by one; the target scores all of them in one forward.
Acceptance rule (lossless for any draft):
    accept draft d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection emit
    z ~ norm(max(0, p_i - q_i)) and stop; if all are accepted emit a bonus z ~ p_(gamma+1).
At temperature 0 both p and q are one-hot, so this is "accept while the draft equals the
target's argmax, then emit the target's argmax" — greedy decoding, exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..decoding.cache import KVCache
from ..decoding.context import DecodeContext, decode_one_token, uncached
from ..decoding.warping import pick, sample, warp
from ..options import Options, option


@dataclass
class SPSOptions(Options):
    gamma: int = option(4, "draft tokens per round (at most)", minimum=1)
    # Still lossless: when to stop depends on the draft alone. (HF's assisted generation
    # calls it assistant_confidence_threshold.)
    stop_below: float = option(0.0, "end a round's drafting once the draft gives its own proposal less than "
                                    "this probability; 0 = always draft gamma", minimum=0, below=1)


def draft_tokens(ctx: DecodeContext, seq: list[int], cache: KVCache, n: int,
                 stop_below: float = 0.0) -> tuple[list[int], torch.Tensor]:
    """Up to n tokens from the draft, one forward each, and the warped draft distributions
    [len, V]; fewer when the draft's probability of a proposal falls below `stop_below`."""
    runner = ctx.draft.runner
    tokens, dists = [], []
    for _ in range(n):
        logits = runner.forward(cache, uncached(seq + tokens, cache, runner.device), last_only=True)
        ctx.stats.draft_forwards += 1
        q = warp(logits[0, -1], ctx.sampling)
        tokens.append(int(pick(q, ctx.sampling, ctx.generator)))
        dists.append(q)
        # An unsure draft is likely rejected: verify now. Confidence is the draft's raw
        # probability (unwarped, so it means the same at T=0, where q is one-hot).
        if stop_below and logits[0, -1].float().softmax(-1)[tokens[-1]] < stop_below:
            break
    return tokens, torch.stack(dists)


def accept_drafts(drafts: list[int], q: torch.Tensor, p: torch.Tensor,
                  generator: torch.Generator | None) -> tuple[int, int]:
    """The speculative-sampling rule: (number of drafts accepted, the token emitted after them).

    q: [n, V] draft distributions; p: [n + 1, V] target distributions at the same positions
    and one beyond."""
    for i, d in enumerate(drafts):
        ratio = p[i, d] / q[i, d]
        if torch.rand((), generator=generator, dtype=torch.float64) < ratio:
            continue
        residual = (p[i] - q[i]).clamp_min(0)
        # p == q up to round-off leaves nothing to renormalise; p itself is then exact.
        return i, int(sample(residual if residual.sum() > 0 else p[i], generator))
    return len(drafts), int(sample(p[len(drafts)], generator))


def speculative_step(ctx: DecodeContext, seq: list[int], target_cache: KVCache,
                     draft_cache: KVCache, gamma: int) -> list[int]:
    """One round: draft gamma tokens, verify them in one target forward; returns new tokens."""
    drafts, q = draft_tokens(ctx, seq, draft_cache, gamma, ctx.options.stop_below)
    # The target sees its uncached tail plus every draft; the rows from the last real token on
    # give p for each draft position and one position beyond.
    n_tail = len(seq) - target_cache.length
    runner = ctx.target.runner
    logits = runner.forward(target_cache, uncached(seq + drafts, target_cache, runner.device))[0, n_tail - 1:]
    ctx.stats.target_forwards += 1
    p = warp(logits, ctx.sampling)
    n_accepted, extra = accept_drafts(drafts, q, p, ctx.generator)
    ctx.stats.record_round(len(drafts), n_accepted)
    # Both caches keep only what the committed sequence validates; the extra token is pending.
    valid = len(seq) + n_accepted
    target_cache.rollback(valid)
    draft_cache.rollback(min(draft_cache.length, valid))
    return drafts[:n_accepted] + [extra]


def decode(ctx: DecodeContext) -> Iterator[list[int]]:
    seq = list(ctx.prompt_ids)
    target_cache = ctx.new_cache(ctx.target)
    draft_cache = ctx.new_cache(ctx.draft)
    while (room := ctx.room(seq)) > 0:
        # Never draft past max_new_tokens or the context: the last token comes from the target.
        if room > 1:
            block = speculative_step(ctx, seq, target_cache, draft_cache, min(ctx.options.gamma, room - 1))
        else:
            block = [decode_one_token(ctx, ctx.target, seq, target_cache)]
            ctx.stats.target_forwards += 1
        seq.extend(block)
        yield block
