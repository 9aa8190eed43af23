"""Autoregressive decoding: one target forward per token. The baseline for everything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from ..decoding.context import DecodeContext, decode_one_token
from ..options import Options


@dataclass
class AROptions(Options):
    """No options."""


def decode(ctx: DecodeContext) -> Iterator[list[int]]:
    seq = list(ctx.prompt_ids)
    cache = ctx.new_cache(ctx.target)
    while ctx.room(seq) > 0:
        # The first step feeds the whole prompt, every later one the newest token.
        token = decode_one_token(ctx, seq, cache)
        seq.append(token)
        yield [token]
