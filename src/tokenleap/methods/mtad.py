"""MTAD — multi-token assisted decoding (Qin et al., ICLR 2025). Spec: shared/specs/mtad.md.

The draft approximates the target's *joint* distribution over a block by beam sampling; the
target accepts the longest prefix whose joint likelihood is not much worse than the draft's:
    L_i = sum_{j<=i} (log p(x_j|...) - log q_j);  accept n = max{i : L_i > log tau} (0 if none),
then emits one extra token y ~ p(.|c, x_1..x_n). Not lossless: it trades exactness for
higher-likelihood blocks. `mtad-tree` verifies every beam of every depth in one forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch

from ..decoding.cache import KVCache
from ..decoding.context import DecodeContext, decode_one_token, uncached
from ..decoding.warping import sample, warp
from ..options import Options, option


@dataclass
class MTADOptions(Options):
    gamma: int = option(4, "block length drafted per round", minimum=2)
    beam_width: int = option(4, "W, the beams drawn per draft step", minimum=1)
    tau: float = option(0.5, "acceptance threshold on the joint likelihood ratio P/Q", above=0)
    without_replacement: bool = option(False, "draw the W beams without replacement")


@dataclass
class Beams:
    """W partial blocks after the last step: tokens [W, s], per-token draft log-probs [W, s] and
    weights [W]; plus each step's draws before reordering (token, log q, parent index into the
    previous step's beams) — the tree variant verifies all of them."""

    tokens: torch.Tensor
    logq: torch.Tensor
    weights: torch.Tensor
    history: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def draw(scores: torch.Tensor, k: int, greedy: bool, replacement: bool, gen: torch.Generator) -> torch.Tensor:
    """k indices into flat `scores`: the top-k when greedy, else a draw proportional to them."""
    if greedy:
        return scores.topk(min(k, int((scores > 0).sum()))).indices
    if not replacement:
        k = min(k, int((scores > 0).sum()))
    # On the CPU: the generator is a CPU one on every device (same seed, same draws).
    return torch.multinomial(scores.cpu(), k, replacement=replacement, generator=gen).to(scores.device)


def beam_sample(ctx: DecodeContext, seq: list[int], cache: KVCache) -> Beams:
    """Steps 1-3 of the spec: gamma draft forwards (batch 1, then batch W) growing W beams.

    Score of extending beam i by v: S(i, v) = w_i * q(v | c, beam_i); W pairs are drawn from the
    normalised S, beams and their cache rows are reordered by parent, and weights renormalised
    proportionally (w / sum w). Greedy: q is the untempered draft softmax and draws are top-W."""
    opts, runner, greedy = ctx.options, ctx.draft.runner, ctx.sampling.greedy
    replacement = not opts.without_replacement

    def dist(logits: torch.Tensor) -> torch.Tensor:
        return logits.float().softmax(-1) if greedy else warp(logits, ctx.sampling)

    # The draft cache keeps one row per beam between rounds, every row holding the context c
    # (see `keep_beam`), so the tail runs in every row and no row is ever copied whole.
    tail = uncached(seq, cache, runner.device)
    q = dist(runner.forward(cache, tail.expand(cache.batch, -1), last_only=True)[0, -1])
    ctx.stats.draft_forwards += 1
    first = draw(q, opts.beam_width, greedy, replacement, ctx.generator)
    root = torch.zeros_like(first)
    beams = Beams(tokens=first[:, None], logq=q[first].log()[:, None], weights=q[first] / q[first].sum(),
                  history=[(first, q[first].log(), root)])
    context = len(seq)  # positions before it agree in every row; only the beams' own get reordered
    cache.select_rows(torch.zeros(len(first), dtype=torch.long), start=context)
    for _ in range(1, opts.gamma):
        q = dist(runner.forward(cache, beams.tokens[:, -1:])[:, -1])  # [W, V]
        ctx.stats.draft_forwards += 1
        scores = (beams.weights[:, None] * q).flatten()
        picked = draw(scores / scores.sum(), opts.beam_width, greedy, replacement, ctx.generator)
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


def accepted_length(logp: torch.Tensor, logq: torch.Tensor, tau: float) -> int:
    """Longest prefix i with L_i = sum_{j<=i}(log p_j - log q_j) > log tau — not the first failure:
    a later prefix that passes again wins (the spec's step 5)."""
    passing = torch.nonzero((logp - logq).cumsum(-1) > math.log(tau)).flatten()
    return int(passing[-1]) + 1 if len(passing) else 0


def mtad_step(ctx: DecodeContext, seq: list[int], target_cache: KVCache, draft_cache: KVCache
              ) -> tuple[list[int], int]:
    """One round: beam-sample a block, verify it in one target forward. Returns (new tokens, n)."""
    beams = beam_sample(ctx, seq, draft_cache)
    best = int(beams.weights.argmax())  # largest draft joint Q among survivors
    block, logq = beams.tokens[best].tolist(), beams.logq[best]
    n_tail = len(seq) - target_cache.length
    runner = ctx.target.runner
    logits = runner.forward(target_cache, uncached(seq + block, target_cache, runner.device))[0, n_tail - 1:]
    ctx.stats.target_forwards += 1
    p = warp(logits, ctx.sampling)  # [gamma + 1, V]
    logp = p[torch.arange(len(block)), block].log()
    n = accepted_length(logp, logq, ctx.options.tau)
    # The extra token comes from the plain warped target after the accepted prefix.
    extra = int(p[n].argmax()) if ctx.sampling.greedy else int(sample(p[n], ctx.generator))
    ctx.stats.record_round(len(block), n)
    valid = len(seq) + n
    target_cache.rollback(valid)
    keep_beam(draft_cache, best, len(seq), valid)
    return block[:n] + [extra], n


def keep_beam(cache: KVCache, row: int, context: int, valid: int) -> None:
    """After a round: every row of the draft cache becomes beam `row` up to `valid` positions.
    Positions before `context` agree in every row already, so only the beam's own are copied."""
    cache.rollback(min(cache.length, valid))
    cache.select_rows(torch.full((cache.batch,), row, dtype=torch.long), start=context)


@dataclass
class Node:
    token: int
    logq: float
    parent: int  # index of the parent node, -1 for depth 1
    depth: int


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


def tree_mask(n_tail: int, nodes: list[Node]) -> torch.Tensor:
    """Tail tokens are causal; a node sees the whole tail, its ancestors and itself."""
    size = n_tail + len(nodes)
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[:n_tail, :n_tail] = torch.ones(n_tail, n_tail, dtype=torch.bool).tril()
    mask[n_tail:, :n_tail] = True
    for k, node in enumerate(nodes):
        row = n_tail + k
        mask[row, row] = True
        if node.parent >= 0:
            mask[row, n_tail:] |= mask[n_tail + node.parent, n_tail:]
    return mask


def tree_step(ctx: DecodeContext, seq: list[int], target_cache: KVCache, draft_cache: KVCache
              ) -> tuple[list[int], int]:
    """MMTAD: all beams of every depth form a token tree verified in one target forward. Accept
    the deepest node whose path passes the joint test (highest log P among passing nodes at that
    depth) and draw the extra token at that node."""
    runner = ctx.target.runner
    nodes = beam_tree(beam_sample(ctx, seq, draft_cache))
    start, n_tail = target_cache.length, len(seq) - target_cache.length
    ids = torch.tensor([seq[start:] + [node.token for node in nodes]], device=runner.device)
    positions = torch.tensor(list(range(start, len(seq))) + [len(seq) + node.depth for node in nodes])
    logits = runner.forward(target_cache, ids, positions=positions, attn_mask=tree_mask(n_tail, nodes))[0]
    ctx.stats.target_forwards += 1
    p = warp(logits, ctx.sampling)
    # Row that predicts node k: its parent's row (the last tail row for depth 1).
    rows = [n_tail - 1 if node.parent < 0 else n_tail + node.parent for node in nodes]
    logp = p[rows, [node.token for node in nodes]].log().tolist()
    L, logP = [], []
    for k, node in enumerate(nodes):
        prev_L, prev_P = (0.0, 0.0) if node.parent < 0 else (L[node.parent], logP[node.parent])
        L.append(prev_L + logp[k] - node.logq)
        logP.append(prev_P + logp[k])
    passing = [k for k in range(len(nodes)) if L[k] > math.log(ctx.options.tau)]
    path: list[int] = []
    if passing:
        deepest = max(nodes[k].depth for k in passing)
        k = max((k for k in passing if nodes[k].depth == deepest), key=lambda k: logP[k])
        while k >= 0:
            path.insert(0, k)
            k = nodes[k].parent
    extra_row = n_tail + path[-1] if path else n_tail - 1
    extra = int(p[extra_row].argmax()) if ctx.sampling.greedy else int(sample(p[extra_row], ctx.generator))
    ctx.stats.record_round(ctx.options.gamma, len(path))
    # Keep the tail's and the accepted path's K/V, packed; the draft restarts from the committed prefix.
    target_cache.keep_positions(start + n_tail, torch.tensor(path, dtype=torch.long))
    # Every row holds the context, so dropping the beams' positions is all there is to do.
    draft_cache.rollback(min(draft_cache.length, len(seq)))
    return [nodes[k].token for k in path] + [extra], len(path)


def _decode(ctx: DecodeContext, step) -> Iterator[list[int]]:
    seq = list(ctx.prompt_ids)
    target_cache = ctx.new_cache(ctx.target, slack=64 + ctx.options.gamma * ctx.options.beam_width)
    draft_cache = ctx.new_cache(ctx.draft)
    while (room := ctx.room(seq)) > 0:
        if room > ctx.options.gamma:
            block, _ = step(ctx, seq, target_cache, draft_cache)
        else:  # too close to the end for a whole block: finish token by token
            block = [decode_one_token(ctx, ctx.target, seq, target_cache)]
            ctx.stats.target_forwards += 1
        seq.extend(block)
        yield block


def decode(ctx: DecodeContext) -> Iterator[list[int]]:
    return _decode(ctx, mtad_step)


def decode_tree(ctx: DecodeContext) -> Iterator[list[int]]:
    return _decode(ctx, tree_step)
