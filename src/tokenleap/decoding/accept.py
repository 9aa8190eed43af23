"""Every acceptance rule, once: what the target keeps of the drafts it verified.

- `speculative`: Leviathan/Chen rejection with the residual (lossless for any draft law q).
- `recursive_rejection`: the same rule over several i.i.d. draws for one position (lossless).
- `greedy_walk`: greedy match on a chain or down a tree (lossless at temperature 0).
- `joint_prefix` / `joint_tree`: MTAD's joint-likelihood rule (not lossless, by design).

p and q are already-warped distributions (`warping.warp`); at temperature 0 both are one-hot,
so the speculative rule is exactly "accept while the draft equals the target's argmax".
"""

from __future__ import annotations

import math

import torch

from .warping import sample


def speculative(drafts: list[int], q: torch.Tensor, p: torch.Tensor,
                generator: torch.Generator | None) -> tuple[int, int]:
    """(drafts accepted, the token emitted after them).

    Accept d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection emit
    z ~ norm(max(0, p_i - q_i)); if all are accepted emit a bonus z ~ p_(n+1).
    q: [n, V] draft laws; p: [n + 1, V] target laws at the same positions and one beyond."""
    for i, d in enumerate(drafts):
        ratio = p[i, d] / q[i, d]
        if torch.rand((), generator=generator, dtype=torch.float64) < ratio:
            continue
        residual = (p[i] - q[i]).clamp_min(0)
        # p == q up to round-off leaves nothing to renormalise; p itself is then exact.
        return i, int(sample(residual if residual.sum() > 0 else p[i], generator))
    return len(drafts), int(sample(p[len(drafts)], generator))


def recursive_rejection(draws: list[int], q: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None
                        ) -> tuple[int | None, torch.Tensor]:
    """Several i.i.d. draws from q for one position, lossless for any number of them: judge each
    by the speculative rule against the current law, which becomes norm(max(0, p - q)) after
    every rejection (so a draw rejected once is never accepted later). Returns (the accepted
    draw, or None with the law an exact token must then come from)."""
    for d in draws:
        if torch.rand((), generator=generator, dtype=torch.float64) < p[d] / q[d]:
            return d, p
        residual = (p - q).clamp_min(0)
        # p == q up to round-off leaves nothing to renormalise; the next draw is then accepted.
        p = residual / residual.sum() if residual.sum() > 0 else p
    return None, p


def greedy_walk(tokens: list[int], parents: list[int], choice: list[int]) -> tuple[list[int], int]:
    """Greedy match down a draft tree (a chain is the tree whose node k has parent k - 1).

    choice[0] is the target's argmax after the pending token, choice[1 + k] its argmax after
    node k. Walk down while a child of the current node is the target's choice; returns (the
    accepted path of node indices, the target's token after it)."""
    path: list[int] = []
    while True:
        z = choice[1 + path[-1] if path else 0]
        here = path[-1] if path else -1
        child = next((k for k, (t, par) in enumerate(zip(tokens, parents)) if t == z and par == here), None)
        if child is None:
            return path, z
        path.append(child)


def joint_prefix(logp: torch.Tensor, logq: torch.Tensor, tau: float) -> int:
    """MTAD: the longest prefix i with L_i = sum_{j<=i}(log p_j - log q_j) > log tau (0 if none).
    The longest, not the first failure: a later prefix that passes again wins (spec step 5)."""
    passing = torch.nonzero((logp - logq).cumsum(-1) > math.log(tau)).flatten()
    return int(passing[-1]) + 1 if len(passing) else 0


def joint_tree(parents: list[int], depths: list[int], logp: list[float], logq: list[float],
               tau: float) -> list[int]:
    """MTAD over a tree: the deepest node whose path passes the joint test, the most likely
    under the target (highest log P) among passing nodes at that depth; returns its path."""
    L: list[float] = []
    logP: list[float] = []
    for k, parent in enumerate(parents):
        prev_L, prev_P = (0.0, 0.0) if parent < 0 else (L[parent], logP[parent])
        L.append(prev_L + logp[k] - logq[k])
        logP.append(prev_P + logp[k])
    passing = [k for k in range(len(parents)) if L[k] > math.log(tau)]
    path: list[int] = []
    if passing:
        deepest = max(depths[k] for k in passing)
        k = max((k for k in passing if depths[k] == deepest), key=lambda k: logP[k])
        while k >= 0:
            path.insert(0, k)
            k = parents[k]
    return path
