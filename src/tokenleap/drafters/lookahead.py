"""PaSS's drafter: drafts read off the lookahead rows of the target's own forward.

Lookahead tokens (learned embeddings, `models.lookahead`) fed after a real token make their
rows predict tokens further ahead: LA_i's row guesses the i-th token after the pending one.
These drafts come out of a target call the method arranges (its "scheme"), not out of a model
of their own, so this drafter is a pair of read-offs rather than a `Drafter` with a forward:
`chain` for the two-call and merged schemes, `tree` for one-call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..decoding.context import DecodeContext
from ..decoding.verify import tree_depths
from ..decoding.warping import pick, sample, warp


@dataclass
class DraftTree:
    """Drafts for one one-call iteration: node k is `tokens[k]` after node `parents[k]` (-1: the
    pending token). Sampling: a chain (parents k-1) with each node's draft law in q, or, with
    several guesses, the distinct tokens among i.i.d. `draws` from q[0] for the next position."""

    tokens: list[int]
    parents: list[int]
    q: torch.Tensor | None = None
    draws: list[int] | None = None

    def depths(self) -> list[int]:
        return tree_depths(self.parents)


def chain(rows: torch.Tensor, ctx: DecodeContext) -> tuple[list[int], torch.Tensor]:
    """A chain d_i ~ q_i (argmax when greedy) from lookahead rows' logits [n, V]; returns the
    drafts and their warped laws q [n, V]."""
    q = warp(rows, ctx.sampling)
    return pick(q, ctx.sampling, ctx.generator).tolist(), q


def tree(block_logits: torch.Tensor, ctx: DecodeContext, max_depth: int, guesses: int) -> DraftTree:
    """Drafts from a lookahead block's logits [L, V], at most `max_depth` deep. Greedy: the
    `guesses` best for the first position, then the top-1 chain under the best one; sampling:
    a chain d_i ~ q_i, or with several guesses that many i.i.d. draws from q_1 alone."""
    depth = min(max_depth, len(block_logits))
    if depth < 1:
        return DraftTree([], [])
    k = guesses
    if not ctx.sampling.greedy:
        q = warp(block_logits[: 1 if k > 1 else depth], ctx.sampling)
        if k == 1:
            return DraftTree(pick(q, ctx.sampling, ctx.generator).tolist(), list(range(-1, depth - 1)), q)
        draws = sample(q[0].expand(k, -1), ctx.generator).tolist()
        tokens = list(dict.fromkeys(draws))
        return DraftTree(tokens, [-1] * len(tokens), q, draws)
    first = block_logits[0].topk(k).indices.tolist()
    rest = block_logits[1:depth].argmax(-1).tolist()
    # The chain hangs under the best first guess (node 0), each node under the one before.
    rest_parents = [0] + list(range(len(first), len(first) + len(rest) - 1)) if rest else []
    return DraftTree(first + rest, [-1] * len(first) + rest_parents)


def add_path(tree: DraftTree, tokens: list[int]) -> int:
    """Add a chain of drafts after the pending token to a greedy tree, sharing the nodes it
    repeats (a trie insert: siblings stay distinct, so a greedy walk stays unambiguous);
    returns how many nodes were added."""
    parent, added = -1, 0
    for token in tokens:
        node = next((k for k, (t, par) in enumerate(zip(tree.tokens, tree.parents)) if t == token and par == parent),
                    None)
        if node is None:
            tree.tokens.append(token)
            tree.parents.append(parent)
            node, added = len(tree.tokens) - 1, added + 1
        parent = node
    return added
