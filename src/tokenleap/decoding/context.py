"""What a decoding method is handed, and the helpers every method's loop uses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..models.loading import Model
from .cache import KVCache
from .stats import DecodeStats
from .warping import Sampling, next_token


class CountingRunner:
    """A model's runner that counts its own forwards into the run's stats: the one place a
    forward is counted. A forward is a pass that ends in the LM head: `forward` (recorded with
    its shape, sequences x new positions, for the cost model), or `head` for a caller that runs the
    layers one by one (PPD's main stream, whose time PPD predicts itself). Everything else is
    the runner's own."""

    def __init__(self, runner: Any, stats: DecodeStats, model: str) -> None:
        self.inner, self._stats, self._model = runner, stats, model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _count(self) -> None:
        counter = f"{self._model}_forwards"
        setattr(self._stats, counter, getattr(self._stats, counter) + 1)

    def forward(self, cache: Any, ids: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        self._count()
        new = ids if ids is not None else kwargs["embeds"]
        self._stats.record_forward(self._model, new.shape[0], new.shape[1])
        return self.inner.forward(cache, ids, **kwargs)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        self._count()
        return self.inner.head(hidden)


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
    # The runners methods call: the models' own, counting their forwards into `stats`.
    target_runner: CountingRunner = field(init=False, repr=False)
    draft_runner: CountingRunner | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.target_runner = CountingRunner(self.target.runner, self.stats, "target")
        self.draft_runner = (CountingRunner(self.draft.runner, self.stats, "draft")
                             if self.draft is not None else None)

    @property
    def self_draft(self) -> bool:
        """The draft is a quantized view of the target's own weights (`draft="self:int8"`)."""
        return self.draft is not None and any(made is self.draft for made in self.target.derived.values())

    def new_cache(self, model: Model, batch: int = 1, slack: int = 64) -> KVCache:
        return model.runner.new_cache(batch, len(self.prompt_ids) + self.max_new_tokens + slack)

    def room(self, seq: list[int]) -> int:
        """New tokens still allowed: by max_new_tokens and by the target's context."""
        produced = len(seq) - len(self.prompt_ids)
        return min(self.max_new_tokens - produced, self.target.max_context - len(seq))


def uncached(seq: list[int], cache: KVCache, device: torch.device | str = "cpu") -> torch.Tensor:
    """The tokens of `seq` the cache has not seen yet, as a [1, n] batch."""
    return torch.tensor([seq[cache.length:]], dtype=torch.long, device=device)


def decode_one_token(ctx: DecodeContext, seq: list[int], cache: KVCache) -> int:
    """One plain target step: feed the uncached tail, emit the next token (argmax or a warped draw)."""
    runner = ctx.target_runner
    logits = runner.forward(cache, uncached(seq, cache, runner.device), last_only=True)
    return int(next_token(logits[0, -1], ctx.sampling, ctx.generator))
