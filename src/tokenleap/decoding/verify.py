"""Verification: the target scores drafts in one forward. Written once for every method.

A chain (`verify_chain`) is the uncached tail of the sequence followed by the drafts, plainly
causal. A tree (`verify_tree`) puts every draft node after the tail at once: a node sees the
tail, its ancestors and itself, at the position it would have in a plain pass, so the K/V of
an accepted path equal a plain pass's and the cache keeps them by packing (`keep_positions`).
Either may carry extra embedding rows (PaSS's lookahead tokens) after the drafts.

Both return the target's logits from the last tail row on: row 0 predicts the first draft (or
the next token), row 1 + k the token after draft/node k.
"""

from __future__ import annotations

import torch

from .cache import KVCache
from .context import uncached


def verify_chain(runner, cache: KVCache, seq: list[int], drafts: list[int],
                 extra_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """[uncached tail of seq, drafts (, extra rows [1, e, D])] in one forward -> logits
    [len(drafts) + 1 (+ e), V]. Every fed position's K/V is appended; the caller rolls back."""
    ids = uncached(seq + drafts, cache, runner.device)
    n_tail = ids.shape[1] - len(drafts)
    if extra_embeds is None:
        logits = runner.forward(cache, ids)
    else:
        logits = runner.forward(cache, embeds=torch.cat([runner.embed(ids), extra_embeds], 1))
    return logits[0, n_tail - 1:]


def tree_depths(parents: list[int]) -> list[int]:
    """Depth of every node (1 under the pending token); parents come before their children."""
    depths: list[int] = []
    for parent in parents:
        depths.append(1 if parent < 0 else depths[parent] + 1)
    return depths


def tree_layout(n_tail: int, parents: list[int], extra_rows: int = 0) -> tuple[list[int], torch.Tensor]:
    """Position offsets from the cache end and the bool attention mask over [tail, nodes] (plus
    `extra_rows` rows the caller fills in, all False here). The tail is causal; node k sees the
    tail, its ancestors and itself, at offset n_tail - 1 + depth."""
    m = len(parents)
    size = n_tail + m + extra_rows
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[:n_tail, :n_tail] = torch.ones(n_tail, n_tail, dtype=torch.bool).tril()
    for k, parent in enumerate(parents):
        row = n_tail + k
        mask[row] = mask[n_tail - 1] if parent < 0 else mask[n_tail + parent]
        mask[row, row] = True
    offsets = list(range(n_tail)) + [n_tail - 1 + d for d in tree_depths(parents)]
    return offsets, mask


def verify_tree(runner, cache: KVCache, seq: list[int], tokens: list[int], parents: list[int],
                extra: tuple[torch.Tensor, list[int], torch.Tensor] | None = None) -> torch.Tensor:
    """[uncached tail of seq, tree nodes (, extra rows)] in one forward -> logits
    [n_tail + len(tokens) (+ e), V] for every fed row (callers pick rows by `tree_layout`).

    extra: (embeds [1, e, D], their offsets, the full mask with their rows filled in) for rows
    that are not tokens (PaSS's lookahead blocks); `tree_layout(..., extra_rows=e)` gives the
    mask to fill."""
    start = cache.length
    ids = torch.tensor([seq[start:] + tokens], device=runner.device)
    n_tail = ids.shape[1] - len(tokens)
    offsets, mask = tree_layout(n_tail, parents) if extra is None else extra[1:]
    positions = start + torch.tensor(offsets, device=runner.device)
    if extra is None:
        return runner.forward(cache, ids, positions=positions, attn_mask=mask)[0]
    embeds = torch.cat([runner.embed(ids), extra[0]], 1)
    return runner.forward(cache, embeds=embeds, positions=positions, attn_mask=mask)[0]
