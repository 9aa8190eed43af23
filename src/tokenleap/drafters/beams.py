"""MTAD's drafter: the draft model beam-samples a block from its *joint* law (spec steps 1-3).

W beams grow for gamma steps (a forward of batch 1, then gamma - 1 forwards of batch W). The
chain method proposes the beam of largest draft joint Q; the tree method (`mtad-tree`) proposes
every beam of every depth as one token tree. With `length` (gamma=auto) each round's gamma comes
from the cost model and the acceptance so far (`decoding.adaptive`), plain target steps
included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..decoding.adaptive import DraftLength
from ..decoding.cache import KVCache
from ..decoding.context import DecodeContext, uncached
from ..decoding.warping import warp
from .base import Draft


@dataclass
class Beams:
    """W partial blocks after the last step: tokens [W, s], per-token draft log-probs [W, s] and
    weights [W]; plus each step's draws before reordering (token, log q, parent index into the
    previous step's beams) — the tree variant verifies all of them."""

    tokens: torch.Tensor
    logq: torch.Tensor
    weights: torch.Tensor
    history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class Node:
    token: int
    logq: float
    parent: int  # index of the parent node, -1 for depth 1
    depth: int  # 0 for the first drafted position


def draw(scores: torch.Tensor, k: int, greedy: bool, replacement: bool, gen: torch.Generator) -> torch.Tensor:
    """k indices into flat `scores`: the top-k when greedy, else a draw proportional to them."""
    if greedy:
        return scores.topk(min(k, int((scores > 0).sum()))).indices
    if not replacement:
        k = min(k, int((scores > 0).sum()))
    # On the CPU: the generator is a CPU one on every device (same seed, same draws).
    return torch.multinomial(scores.cpu(), k, replacement=replacement, generator=gen).to(scores.device)


class BeamDrafter:
    def __init__(self, ctx: DecodeContext, gamma: int, beam_width: int, without_replacement: bool,
                 length: DraftLength | None = None) -> None:
        self.ctx, self.gamma, self.width, self.length = ctx, gamma, beam_width, length
        self.replacement = not without_replacement
        self.cache = ctx.new_cache(ctx.draft)
        self.best: int | None = None  # the beam proposed as a chain, None after a tree
        self.proposed = 0

    def max_drafts(self, room: int) -> int:
        if self.length:
            return self.length.choose(room)
        # A block is gamma tokens and the target adds one: too close to the end, plain steps.
        return self.gamma if room > self.gamma else 0

    def sample(self, seq: list[int], gamma: int) -> Beams:
        """Score of extending beam i by v: S(i, v) = w_i * q(v | c, beam_i); W pairs are drawn from
        the normalised S, beams and their cache rows are reordered by parent, and weights
        renormalised proportionally (w / sum w). Greedy: q is the untempered draft softmax and
        draws are top-W."""
        ctx, runner, cache = self.ctx, self.ctx.draft_runner, self.cache
        greedy = ctx.sampling.greedy

        def dist(logits: torch.Tensor) -> torch.Tensor:
            return logits.float().softmax(-1) if greedy else warp(logits, ctx.sampling)

        # The cache keeps one row per beam between rounds, every row holding the context c (see
        # `commit`), so the tail runs in every row and no row is ever copied whole.
        tail = uncached(seq, cache, runner.device)
        q = dist(runner.forward(cache, tail.expand(cache.batch, -1), last_only=True)[0, -1])
        first = draw(q, self.width, greedy, self.replacement, ctx.generator)
        root = torch.zeros_like(first)
        beams = Beams(tokens=first[:, None], logq=q[first].log()[:, None], weights=q[first] / q[first].sum(),
                      history=[(first, q[first].log(), root)])
        context = len(seq)  # positions before it agree in every row; only the beams' own get reordered
        cache.select_rows(torch.zeros(len(first), dtype=torch.long), start=context)
        for _ in range(1, gamma):
            q = dist(runner.forward(cache, beams.tokens[:, -1:])[:, -1])  # [W, V]
            scores = (beams.weights[:, None] * q).flatten()
            picked = draw(scores / scores.sum(), self.width, greedy, self.replacement, ctx.generator)
            parent, token = picked // q.shape[-1], picked % q.shape[-1]
            cache.select_rows(parent, start=context)
            logq = q[parent, token].log()
            beams = Beams(tokens=torch.cat([beams.tokens[parent], token[:, None]], 1),
                          logq=torch.cat([beams.logq[parent], logq[:, None]], 1),
                          weights=scores[picked] / scores[picked].sum(),
                          history=beams.history + [(token, logq, parent)])
        if greedy:  # T=0: the draft is deterministic, q of its choice is 1
            beams.logq.zero_()
            beams.history = [(t, torch.zeros_like(lq), par) for t, lq, par in beams.history]
        return beams

    def propose(self, seq: list[int], n: int) -> Draft:
        """The block of n tokens of the beam with the largest draft joint Q among the survivors."""
        beams = self.sample(seq, n)
        self.best, self.proposed = int(beams.weights.argmax()), n
        return Draft(beams.tokens[self.best].tolist(), logq=beams.logq[self.best])

    def propose_tree(self, seq: list[int], n: int) -> list[Node]:
        """Every beam of every depth up to n, as a token tree (`beam_tree`)."""
        self.best, self.proposed = None, n
        return beam_tree(self.sample(seq, n))

    def take_prompt(self, target_cache: KVCache, length: int) -> None:
        self.cache.copy_prefix(target_cache, length, self.ctx.draft.dtype)  # into every beam's row

    def commit(self, seq: list[int], valid: int) -> None:
        """Every row becomes the proposed beam up to `valid` positions (positions before the
        round's context agree in every row already, so only the beam's own are copied). After a
        tree, rows hold different beams: keep the context only."""
        if self.length:
            self.length.update(self.proposed, valid - len(seq))
        self.cache.rollback(min(self.cache.length, valid if self.best is not None else len(seq)))
        if self.best is not None:
            rows = torch.full((self.cache.batch,), self.best, dtype=torch.long)
            self.cache.select_rows(rows, start=len(seq))


def beam_tree(beams: Beams) -> list[Node]:
    """Every beam of every depth as a token tree; identical (parent, token) draws share a node.
    Parents always come before their children."""
    nodes: list[Node] = []
    index: dict[tuple[int, int], int] = {}
    previous: list[int] = []
    for depth, (tokens, logq, parents) in enumerate(beams.history):
        current = []
        for token, lq, par in zip(tokens.tolist(), logq.tolist(), parents.tolist()):
            key = (previous[par] if depth else -1, token)
            if key not in index:
                index[key] = len(nodes)
                nodes.append(Node(token, lq, key[0], depth))
            current.append(index[key])
        previous = current
    return nodes
