"""MTAD — multi-token assisted decoding (Qin et al., ICLR 2025). Spec: shared/specs/mtad.md.

The draft approximates the target's *joint* distribution over a block by beam sampling
(`drafters.beams`); the target accepts the longest prefix whose joint likelihood is not much
worse than the draft's (`decoding.accept.joint_prefix`):
    L_i = sum_{j<=i} (log p(x_j|...) - log q_j);  accept n = max{i : L_i > log tau} (0 if none),
then emits one extra token y ~ p(.|c, x_1..x_n). Not lossless: it trades exactness for
higher-likelihood blocks. `mtad-tree` verifies every beam of every depth in one forward.

gamma=0 (the default) chooses each round's block length from this machine's measured costs
(W draft rows per step, the verified rows) and the acceptance so far (`decoding.adaptive`):
plain target steps when no block pays, which on a machine where drafting cannot win is `ar`.
The claims setting of the paper is gamma=4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from ..decoding import accept
from ..decoding.adaptive import AUTO_MOST, DraftLength
from ..decoding.cache import KVCache
from ..decoding.context import DecodeContext
from ..decoding.speculate import chain_step, speculative_decode
from ..decoding.verify import tree_depths, verify_tree
from ..decoding.warping import pick, warp
from ..drafters.base import Draft
from ..drafters.beams import BeamDrafter
from ..errors import TokenleapError
from ..models.cost import CostModel
from ..options import Options, option


@dataclass
class MTADOptions(Options):
    gamma: int = option(0, "block length drafted per round; 0 = auto: chosen every round from this machine's "
                           "measured forward costs and the acceptance so far (plain steps when no block pays)",
                        minimum=0)
    beam_width: int = option(4, "W, the beams drawn per draft step", minimum=1)
    tau: float = option(0.5, "acceptance threshold on the joint likelihood ratio P/Q", above=0)
    without_replacement: bool = option(False, "draw the W beams without replacement")

    def check(self) -> None:
        if self.gamma == 1:
            raise TokenleapError("gamma must be 0 (auto) or a block of 2 or more tokens, got 1")


def joint_rule(ctx: DecodeContext):
    """The chain rule: the longest passing prefix, then the extra token from the plain warped
    target after it."""

    def rule(draft: Draft, p: torch.Tensor) -> tuple[int, int]:
        logp = p[torch.arange(len(draft.tokens)), draft.tokens].log()
        n = accept.joint_prefix(logp, draft.logq, ctx.options.tau)
        return n, int(pick(p[n], ctx.sampling, ctx.generator))

    return rule


def tree_step(ctx: DecodeContext, seq: list[int], cache: KVCache, drafter: BeamDrafter, n: int) -> list[int]:
    """MMTAD: all beams of every depth form a token tree verified in one target forward; the
    deepest passing node (`accept.joint_tree`) is accepted and the extra token drawn there."""
    nodes = drafter.propose_tree(seq, n)
    tokens, parents = [node.token for node in nodes], [node.parent for node in nodes]
    start, n_tail = cache.length, len(seq) - cache.length
    p = warp(verify_tree(ctx.target_runner, cache, seq, tokens, parents), ctx.sampling)
    # Row that predicts node k: its parent's row (the last tail row for depth 1).
    rows = [n_tail - 1 if parent < 0 else n_tail + parent for parent in parents]
    logp = p[rows, tokens].log().tolist()
    depths = tree_depths(parents)
    path = accept.joint_tree(parents, depths, logp, [node.logq for node in nodes], ctx.options.tau)
    extra = int(pick(p[n_tail + path[-1] if path else n_tail - 1], ctx.sampling, ctx.generator))
    ctx.stats.record_round(max(depths), len(path), nodes=len(nodes))
    # Keep the tail's and the accepted path's K/V, packed; the draft keeps the committed context.
    cache.keep_positions(start + n_tail, torch.tensor(path, dtype=torch.long))
    drafter.commit(seq, len(seq) + len(path))
    return [tokens[k] for k in path] + [extra]


def _drafter(ctx: DecodeContext, tree: bool) -> BeamDrafter:
    opts = ctx.options
    if opts.gamma:
        return BeamDrafter(ctx, opts.gamma, opts.beam_width, opts.without_replacement)
    cost = CostModel.of(ctx.target, ctx.draft, batched=opts.beam_width > 1)
    length = DraftLength(cost, least=2, width=opts.beam_width, tree=tree)
    return BeamDrafter(ctx, opts.gamma, opts.beam_width, opts.without_replacement, length)


def _decode(ctx: DecodeContext, tree: bool) -> Iterator[list[int]]:
    drafter = _drafter(ctx, tree)
    step = tree_step if tree else chain_step(joint_rule(ctx))
    slack = 64 + (ctx.options.gamma or AUTO_MOST) * ctx.options.beam_width  # room for a whole tree fed at once
    return speculative_decode(ctx, drafter, step, slack=slack, length=drafter.length)


def decode(ctx: DecodeContext) -> Iterator[list[int]]:
    return _decode(ctx, tree=False)


def decode_tree(ctx: DecodeContext) -> Iterator[list[int]]:
    return _decode(ctx, tree=True)
