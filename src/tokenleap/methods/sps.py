"""Speculative sampling with a draft model (Leviathan et al. 2023; Chen et al. 2023).

The draft proposes gamma tokens one by one (`drafters.draft_model`); the target scores all of
them in one forward. Acceptance rule (`decoding.accept.speculative`, lossless for any draft):
    accept draft d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection emit
    z ~ norm(max(0, p_i - q_i)) and stop; if all are accepted emit a bonus z ~ p_(gamma+1).
At temperature 0 both p and q are one-hot, so this is "accept while the draft equals the
target's argmax, then emit the target's argmax" — greedy decoding, exactly.

gamma=0 (the default) chooses each round's length from this machine's measured costs and the
acceptance so far (`decoding.adaptive`), plain target steps included when drafting does not
pay; the choice depends only on past rounds, so the rule above stays lossless.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from ..decoding import accept
from ..decoding.adaptive import DraftLength
from ..decoding.context import DecodeContext
from ..decoding.speculate import chain_step, speculative_decode
from ..drafters.draft_model import DraftModelDrafter
from ..models.cost import CostModel
from ..options import Options, option



@dataclass
class SPSOptions(Options):
    gamma: int = option(0, "draft tokens per round (at most); 0 = auto: chosen every round from this "
                           "machine's measured forward costs and the acceptance so far", minimum=0)
    # Still lossless: when to stop depends on the draft alone. (HF's assisted generation
    # calls it assistant_confidence_threshold.)
    stop_below: float = option(0.0, "end a round's drafting once the draft gives its own proposal less than "
                                    "this probability; 0 = always draft gamma", minimum=0, below=1)


def decode(ctx: DecodeContext) -> Iterator[list[int]]:
    opts = ctx.options
    length = DraftLength(CostModel.of(ctx.target, ctx.draft)) if opts.gamma == 0 else None
    drafter = DraftModelDrafter(ctx, opts.gamma, opts.stop_below, length)
    rule = chain_step(lambda draft, p: accept.speculative(draft.tokens, draft.q, p, ctx.generator))
    return speculative_decode(ctx, drafter, rule, length=length)
