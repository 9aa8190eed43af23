"""A draft model proposing a chain, one forward per token (speculative sampling's drafter).

The draft is any model sharing the target's tokenizer: a smaller model, or the target's own
weights quantized (`draft="self:int8"`). Its cache keeps only what the committed sequence
validates, so each round feeds it the uncached tail and then one token per forward. A
self-draft's cache starts with the target's K/V of the prompt (`take_prompt`): its own forward
over a long prompt costs more than the target's (int8 here: 1.9 s against 0.8 s for 769 tokens).
"""

from __future__ import annotations

import torch

from ..decoding.adaptive import DraftLength
from ..decoding.cache import KVCache
from ..decoding.context import DecodeContext, uncached
from ..decoding.warping import pick, warp
from .base import Draft


class DraftModelDrafter:
    """gamma drafts per round, or with `length` as many as it chooses each round (adaptive)."""

    def __init__(self, ctx: DecodeContext, gamma: int, stop_below: float = 0.0,
                 length: DraftLength | None = None) -> None:
        self.ctx, self.gamma, self.stop_below, self.length = ctx, gamma, stop_below, length
        self.cache = ctx.new_cache(ctx.draft)
        self.proposed = 0

    def max_drafts(self, room: int) -> int:
        # Never draft past max_new_tokens or the context: the last token comes from the target.
        return self.length.choose(room) if self.length else min(self.gamma, room - 1)

    def propose(self, seq: list[int], n: int) -> Draft:
        """Up to n tokens with their warped draft laws q [len, V]; fewer when the draft's own
        probability of a proposal falls below `stop_below`."""
        ctx, runner, cache = self.ctx, self.ctx.draft_runner, self.cache
        tokens, dists = [], []
        for _ in range(n):
            logits = runner.forward(cache, uncached(seq + tokens, cache, runner.device), last_only=True)
            q = warp(logits[0, -1], ctx.sampling)
            tokens.append(int(pick(q, ctx.sampling, ctx.generator)))
            dists.append(q)
            # An unsure draft is likely rejected: verify now. Confidence is the draft's raw
            # probability (unwarped, so it means the same at T=0, where q is one-hot). Still
            # lossless: when to stop depends on the draft alone.
            if self.stop_below and logits[0, -1].float().softmax(-1)[tokens[-1]] < self.stop_below:
                break
        self.proposed = len(tokens)
        return Draft(tokens, q=torch.stack(dists))

    def take_prompt(self, target_cache: KVCache, length: int) -> None:
        self.cache.copy_prefix(target_cache, length, self.ctx.draft.dtype)

    def commit(self, seq: list[int], valid: int) -> None:
        self.cache.rollback(min(self.cache.length, valid))
        if self.length:
            self.length.update(self.proposed, valid - len(seq))
