"""The model-execution interface every decoding method talks to.

A runner executes a causal LM over *new* positions against a KV cache. Two exist:
`LlamaRunner` (our lean path for Llama-family weights: pre-allocated cache, rollback is a
cursor move, per-layer access for early exit) and `HFRunner` (any `transformers` causal LM
through its own forward and `DynamicCache`). Methods only use what is declared here.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..decoding.cache import KVCache


class Runner(Protocol):
    num_layers: int
    vocab_size: int
    dtype: torch.dtype
    device: torch.device

    def new_cache(self, batch: int = 1, capacity: int = 256) -> KVCache:
        """An empty cache able to hold `capacity` positions (it may grow)."""

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings for token ids [B, n] -> [B, n, d]."""

    def forward(self, cache: KVCache, ids: torch.Tensor | None = None, *,
                embeds: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        """Run new positions [B, n] (ids or embeds) after the cache; append their K/V.

        positions: absolute position ids [n] (default: cache.length + arange(n)).
        attn_mask: bool [n, n], which new positions each new position may see (default causal);
          all cached positions are always visible.
        Returns logits [B, n, V] (or [B, 1, V] with last_only).
        """
