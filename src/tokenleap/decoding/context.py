"""What a decoding method is handed, and the helpers every method's loop uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..models.loading import Model
from .cache import KVCache
from .stats import DecodeStats
from .warping import Sampling, next_token


@dataclass
class DecodeContext:
    target: Model
    draft: Model | None
    prompt_ids: list[int]
    sampling: Sampling
    generator: torch.Generator
    stats: DecodeStats
    max_new_tokens: int
    options: Any  # the method's own options dataclass

    def new_cache(self, model: Model, batch: int = 1, slack: int = 64) -> KVCache:
        return model.runner.new_cache(batch, len(self.prompt_ids) + self.max_new_tokens + slack)

    def room(self, seq: list[int]) -> int:
        """New tokens still allowed: by max_new_tokens and by the target's context."""
        produced = len(seq) - len(self.prompt_ids)
        return min(self.max_new_tokens - produced, self.target.max_context - len(seq))


def uncached(seq: list[int], cache: KVCache, device: torch.device | str = "cpu") -> torch.Tensor:
    """The tokens of `seq` the cache has not seen yet, as a [1, n] batch."""
    return torch.tensor([seq[cache.length:]], dtype=torch.long, device=device)


def decode_one_token(ctx: DecodeContext, model: Model, seq: list[int], cache: KVCache) -> int:
    """One plain step: feed the uncached tail, emit the next token (argmax or a warped draw)."""
    logits = model.runner.forward(cache, uncached(seq, cache, model.runner.device), last_only=True)
    return int(next_token(logits[0, -1], ctx.sampling, ctx.generator))
