"""KV caches with cheap rollback.

Every method keeps the same invariant: a cache holds the keys/values of the first
`cache.length` committed tokens, and the next forward is fed the uncached tail. Rolling
back after a rejected draft is `cache.rollback(n)`: for the pre-allocated cache it only
moves a cursor; the stale slots are overwritten by the next forward.
"""

from __future__ import annotations

from typing import Protocol

import torch


class KVCache(Protocol):
    """What methods rely on, whichever runner made the cache."""

    length: int  # committed positions held

    @property
    def batch(self) -> int: ...

    def rollback(self, length: int) -> None:
        """Forget every position at or after `length`."""

    def select_rows(self, rows: torch.Tensor, start: int = 0) -> None:
        """Make row i a copy of old row rows[i] (beam reordering or expansion). The caller
        promises that positions before `start` already agree in every row (a shared context), so
        a cache may skip them while the batch size stays the same."""

    def keep_positions(self, start: int, kept: torch.Tensor) -> None:
        """Keep positions `start + kept` (sorted offsets) after `start`, packed contiguously."""

    def copy_prefix(self, src: "KVCache", length: int, dtype: torch.dtype) -> bool:
        """Become positions [0, length) of src's first row (in every row, in `dtype`): a self-draft
        taking the prompt's K/V from its target, the same layers. False (nothing changed) where
        src is another kind of cache, or of other layers or heads."""


def kept_prefix(kept: torch.Tensor) -> bool:
    """True when the kept offsets are 0, 1, ..., n-1 (an accepted chain, or nothing): keeping
    them is a rollback, with nothing to copy."""
    return bool((kept.cpu() == torch.arange(kept.numel())).all())


class StaticKVCache:
    """Pre-allocated per-layer K/V tensors [batch, kv_heads, capacity, head_dim] and a cursor."""

    def __init__(self, num_layers: int, batch: int, kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device | str = "cpu", zeroed: bool = True) -> None:
        # zeroed=False leaves the slots uninitialised, for a user that writes every slot before
        # reading it: its pages are then touched only when used (a fault costs ~10 us in a VM).
        shape = (batch, kv_heads, capacity, head_dim)
        new = torch.zeros if zeroed else torch.empty
        self.keys = [new(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [new(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.length = 0

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def capacity(self) -> int:
        return self.keys[0].shape[2]

    @torch.no_grad()
    def reserve(self, needed: int) -> None:
        """Grow (doubling) so that `needed` positions fit; existing entries are kept."""
        if needed <= self.capacity:
            return
        new_cap = max(needed, 2 * self.capacity)
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                grown = old.new_zeros(old.shape[:2] + (new_cap,) + old.shape[3:])
                grown[:, :, : self.length] = old[:, :, : self.length]
                store[i] = grown

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot roll back to {length} from {self.length}")
        self.length = length

    @torch.no_grad()
    def select_rows(self, rows: torch.Tensor, start: int = 0) -> None:
        for store in (self.keys, self.values):
            for i, old in enumerate(store):
                if rows.numel() == old.shape[0]:
                    # Same batch size: reorder in place, live positions from `start` only.
                    old[:, :, start: self.length] = old[rows, :, start: self.length]
                else:
                    store[i] = old[rows]

    @torch.no_grad()
    def keep_positions(self, start: int, kept: torch.Tensor) -> None:
        if kept_prefix(kept):
            self.rollback(start + kept.numel())
            return
        src = start + kept.to(torch.long)
        for store in (self.keys, self.values):
            for layer in store:
                layer[:, :, start : start + src.numel()] = layer[:, :, src]
        self.length = start + src.numel()

    @torch.no_grad()
    def copy_prefix(self, src: KVCache, length: int, dtype: torch.dtype) -> bool:
        if not (isinstance(src, StaticKVCache) and src.length >= length and len(self.keys) == len(src.keys)
                and self.keys[0].shape[1::2] == src.keys[0].shape[1::2]):
            return False
        self.reserve(length)
        for mine, theirs in ((self.keys, src.keys), (self.values, src.values)):
            for layer, source in zip(mine, theirs):
                layer[:, :, :length] = source[:1, :, :length]  # (into this cache's own dtype)
        self.length = length
        return True
