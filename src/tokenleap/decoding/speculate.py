"""The speculative loop every drafter-based method shares: draft, verify, accept, repeat.

One round (`chain_step`): the drafter proposes up to n tokens; the target scores the uncached
tail and every draft in one forward (`verify.verify_chain`); the method's acceptance rule keeps
a prefix and names one more token; the target cache rolls back to what is committed (a cursor
move) and the drafter drops what was not kept. Near the end, where the drafter cannot draft,
or in a round where it proposes nothing (prompt lookup without a match), the target takes
plain steps. With a self-draft the first token is a plain step too, after which the draft
copies the prompt's K/V from the target's cache (`Drafter.take_prompt`).
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from ..drafters.base import Draft, Drafter
from .adaptive import DraftLength
from .cache import KVCache
from .context import DecodeContext, decode_one_token
from .verify import verify_chain
from .warping import warp

# An acceptance rule for a chain: (the draft, target laws p [n + 1, V]) -> (drafts kept, next token).
ChainRule = Callable[[Draft, torch.Tensor], tuple[int, int]]
# A round: (ctx, committed sequence, target cache, drafter, drafts allowed) -> new tokens.
Step = Callable[[DecodeContext, list[int], KVCache, Drafter, int], list[int]]


def chain_step(accept: ChainRule) -> Step:
    """A round that verifies the drafter's chain and judges it with `accept`."""

    def step(ctx: DecodeContext, seq: list[int], cache: KVCache, drafter: Drafter, n: int) -> list[int]:
        draft = drafter.propose(seq, n)
        if not draft.tokens:
            # Nothing to verify: a plain target step, not a verification round.
            drafter.commit(seq, len(seq))
            return [decode_one_token(ctx, seq, cache)]
        p = warp(verify_chain(ctx.target_runner, cache, seq, draft.tokens), ctx.sampling)
        n_accepted, extra = accept(draft, p)
        ctx.stats.record_round(len(draft.tokens), n_accepted)
        # Both sides keep only what the committed sequence validates; `extra` is pending.
        valid = len(seq) + n_accepted
        cache.rollback(valid)
        drafter.commit(seq, valid)
        return draft.tokens[:n_accepted] + [extra]

    return step


def speculative_decode(ctx: DecodeContext, drafter: Drafter, step: Step, slack: int = 64,
                       length: DraftLength | None = None) -> Iterator[list[int]]:
    """Yield blocks of committed tokens: a speculative round while the drafter can draft, a
    plain target step otherwise. `length`: the drafter's adaptive draft length (gamma=auto),
    whose choices become the run's method stats, also when the driver stops early."""
    seq = list(ctx.prompt_ids)
    cache = ctx.new_cache(ctx.target, slack=slack)
    try:
        if ctx.self_draft and ctx.room(seq) > 0:
            # A self-draft reads the prompt from the target's cache rather than running its own
            # forward over it: the first token is a plain target step, then the draft copies.
            seq.append(decode_one_token(ctx, seq, cache))
            drafter.take_prompt(cache, len(ctx.prompt_ids))
            yield seq[-1:]
        while (room := ctx.room(seq)) > 0:
            n = drafter.max_drafts(room)
            block = step(ctx, seq, cache, drafter, n) if n > 0 else [decode_one_token(ctx, seq, cache)]
            seq.extend(block)
            yield block
    finally:  # EOS, a stop string, a cancelled stream
        if length is not None:
            ctx.stats.method_stats = length.stats()
