"""The drafter interface (like HF's `get_candidates` / `update_candidate_strategy`, or vLLM's
`propose`): what the speculative loop asks of any source of drafts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..decoding.cache import KVCache


@dataclass
class Draft:
    """Draft tokens for one round, and what acceptance rules may need to judge them."""

    tokens: list[int]
    q: torch.Tensor | None = None  # [n, V] the warped draft law at each position (sampling rules)
    logq: torch.Tensor | None = None  # [n] log q of each proposed token (MTAD's joint rule)


class Drafter(Protocol):
    def max_drafts(self, room: int) -> int:
        """Drafts to propose when `room` new tokens are still allowed (the target emits one
        more after them); 0 means "take a plain target step instead"."""

    def propose(self, seq: list[int], n: int) -> Draft:
        """Up to n drafts to follow the committed sequence `seq`; none (an empty Draft) when
        the drafter has nothing to offer (prompt lookup without a match): the round is then
        a plain target step."""

    def commit(self, seq: list[int], valid: int) -> None:
        """The round is judged: the first `valid` positions of seq + drafts are committed
        (the token emitted after them is not yet fed to anything). Drop the rest."""

    def take_prompt(self, target_cache: KVCache, length: int) -> None:
        """With a self-draft (`DecodeContext.self_draft`), the loop makes the first token a plain
        target step and then calls this: the target's cache holds the prompt's positions
        [0, length), which a drafter with a draft cache copies rather than computing them."""
