"""Prompt lookup decoding (Saxena 2023; HF's `prompt_lookup_num_tokens`): drafts copied from
earlier text, no draft model.

The drafter (`drafters.prompt_lookup`) matches the last n-gram of the committed sequence
(n = max_ngram down to min_ngram) against earlier text and proposes what followed its most
recent occurrence, up to num_draft tokens (adapting below that to acceptance); the target
verifies them in one forward. Without a match the round is a plain target step. The drafts'
laws are one-hot, so the speculative rule accepts d with probability p(d) and on a rejection
samples from p without d: lossless, and greedy match at temperature 0. It pays off where the
output repeats its input (summaries, extraction, code edits, quoting).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from ..decoding import accept
from ..decoding.context import DecodeContext
from ..decoding.speculate import chain_step, speculative_decode
from ..drafters.prompt_lookup import PromptLookupDrafter
from ..errors import TokenleapError
from ..options import Options, option


@dataclass
class PLDOptions(Options):
    num_draft: int = option(10, "draft tokens per round at most (HF's prompt_lookup_num_tokens)", minimum=1)
    max_ngram: int = option(3, "longest n-gram of the last tokens looked up in earlier text", minimum=1)
    min_ngram: int = option(1, "shortest n-gram looked up; no match down to it means a plain target step",
                            minimum=1)
    adaptive: bool = option(True, "adapt the draft length to acceptance (back to num_draft after a fully "
                                  "kept draft, one fewer after one less than half kept); off = always num_draft")

    def check(self) -> None:
        if self.min_ngram > self.max_ngram:
            raise TokenleapError(f"min_ngram ({self.min_ngram}) must be <= max_ngram ({self.max_ngram})")


def decode(ctx: DecodeContext) -> Iterator[list[int]]:
    o = ctx.options
    drafter = PromptLookupDrafter(ctx, o.max_ngram, o.min_ngram, o.num_draft, o.adaptive)
    rule = chain_step(lambda draft, p: accept.speculative(draft.tokens, draft.q, p, ctx.generator))
    return speculative_decode(ctx, drafter, rule)
