"""Prompt lookup: drafts copied from earlier text, no model involved (Saxena 2023; HF's
`prompt_lookup_num_tokens`).

Each round matches the last n tokens of the committed sequence (prompt + generated) against
earlier text, trying n = max_ngram down to min_ngram, and proposes the tokens that followed
the most recent earlier occurrence. When that occurrence is so recent that its continuation
runs into the suffix itself (text repeating with a short period), the continuation is read
on cyclically, i.e. the period is assumed to repeat. No match at any n: the draft is empty
and the loop takes a plain target step.

The drafts carry no probabilities, so each draft law q is the one-hot of the proposed token.
The speculative rule (`accept.speculative`) then accepts d with probability p(d) and, on a
rejection, samples from p with d removed, renormalised: HF's rule for candidates without
logits ("case 2"), and lossless like any draft law. At temperature 0 it is greedy match.

The draft length adapts to acceptance (`adaptive`): it starts at num_draft, goes back to
num_draft after a round that kept every draft (a copy is under way: draft long), and drops by
one (down to 1) after a round that kept fewer than half. Acceptance is all or nothing more
often than not (a match is either the text being copied or a coincidence) and extra rows in
a verification forward are cheap, so the rule recovers at once and shrinks slowly (the
rules compared: docs/methods/pld.md). Lossless either way: the length depends only on past
rounds.

Cheap: an n-gram -> most recent continuation index, per n, updated with only the tokens
committed since the last round (the sequence only grows within a decode).
"""

from __future__ import annotations

import torch

from ..decoding.cache import KVCache
from ..decoding.context import DecodeContext
from .base import Draft


class PromptLookupDrafter:
    def __init__(self, ctx: DecodeContext, max_ngram: int = 3, min_ngram: int = 1, num_draft: int = 10,
                 adaptive: bool = True) -> None:
        self.sizes = range(max_ngram, min_ngram - 1, -1)  # longest first: a longer match is a better guess
        self.num_draft, self.adaptive = num_draft, adaptive
        self.length = num_draft  # this round's draft length, adapted by `commit`
        self.eos = ctx.target.eos_token_ids
        self.vocab, self.device = ctx.target_runner.vocab_size, ctx.target_runner.device
        # n -> {n-gram: index of the token that followed its most recent occurrence}
        self.index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in self.sizes}
        self.indexed = 0  # continuation indices below this are in the index
        self.proposed = 0  # drafts proposed in the round being judged

    def max_drafts(self, room: int) -> int:
        # The target emits one more token after the drafts, so leave it room.
        return min(self.length, room - 1)

    def lookup(self, seq: list[int]) -> int | None:
        """Where the continuation of the last n-gram's most recent earlier occurrence starts
        (longest n first), or None when no n-gram matches."""
        # Index every n-gram whose continuation is known (it ends before the last token);
        # later occurrences overwrite earlier ones, so the index holds the most recent.
        for i in range(self.indexed, len(seq)):
            for n in self.sizes:
                if i >= n:
                    self.index[n][tuple(seq[i - n:i])] = i
        self.indexed = len(seq)
        for n in self.sizes:
            if len(seq) > n and (start := self.index[n].get(tuple(seq[-n:]))) is not None:
                return start
        return None

    def propose(self, seq: list[int], n: int) -> Draft:
        """Up to n tokens copied from after the last n-gram's most recent earlier occurrence,
        with one-hot laws q [len, V]; none when nothing matches."""
        start = self.lookup(seq)
        if start is None or n <= 0:
            self.proposed = 0
            return Draft([])
        # Read the continuation on cyclically: past the end, the period seq[start:] repeats.
        tail = seq[start:]
        tokens = [tail[k % len(tail)] for k in range(n)]
        # Nothing after an end-of-sequence token can be kept: stop the draft there.
        cut = next((k + 1 for k, t in enumerate(tokens) if t in self.eos), len(tokens))
        tokens = tokens[:cut]
        q = torch.zeros(len(tokens), self.vocab, device=self.device)
        q[torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
        self.proposed = len(tokens)
        return Draft(tokens, q=q)

    def take_prompt(self, target_cache: KVCache, length: int) -> None:
        """(No model, no cache: the prompt is read from the token ids.)"""

    def commit(self, seq: list[int], valid: int) -> None:
        """Adapt the draft length to how much of this round's draft was kept."""
        accepted = valid - len(seq)
        if not self.adaptive or self.proposed == 0:
            return  # fixed length, or no draft was judged (a plain step)
        if accepted == self.proposed:
            self.length = self.num_draft
        elif 2 * accepted < self.proposed:
            self.length = max(1, self.length - 1)
