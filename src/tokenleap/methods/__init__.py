"""Decoding methods: one module each, all driven by `tokenleap.generate`.

A method is a generator `decode(ctx) -> Iterator[list[int]]` that yields blocks of newly
committed tokens; the driver stops it at EOS, stop strings or max_new_tokens, so methods
never need to know about stopping beyond not wasting work past `ctx.room(...)`. Where the
algorithm allows, a method is a drafter (`tokenleap.drafters`) plus an acceptance rule
(`decoding.accept`) run by the shared loop (`decoding.speculate`): sps, mtad and pld. PaSS and PPD
keep their own loops (their docstrings say why). A method with its own figures declares a
typed stats record (`MethodSpec.stats`) that the bench report asks for its section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

from ..decoding.adaptive import DraftLengthStats
from ..decoding.stats import MethodStats
from ..errors import TokenleapError
from ..options import build
from . import ar, mtad, pass_, pld, ppd, sps
from .ppd_latency import PPDStats


@dataclass(frozen=True)
class MethodSpec:
    name: str
    decode: Callable[..., Iterator[list[int]]]
    options: type  # its options dataclass (see tokenleap.options)
    needs_draft: bool
    lossless: bool  # output law equals the target's (greedy output equals greedy AR)
    description: str
    stats: type[MethodStats] | None = None  # the method's own typed stats record, if it keeps one

    def make_options(self, values: dict[str, Any]) -> Any:
        """The method's options from keyword values; unknown, ill-typed or out-of-range ones are errors."""
        return build(self.options, values, owner=f"method {self.name!r}")


METHODS: dict[str, MethodSpec] = {
    "ar": MethodSpec("ar", ar.decode, ar.AROptions, needs_draft=False, lossless=True,
                     description="autoregressive decoding (greedy or sampling)"),
    "sps": MethodSpec("sps", sps.decode, sps.SPSOptions, needs_draft=True, lossless=True,
                      description="speculative sampling with a draft model", stats=DraftLengthStats),
    "mtad": MethodSpec("mtad", mtad.decode, mtad.MTADOptions, needs_draft=True, lossless=False,
                       description="multi-token assisted decoding: beam-sampled draft, joint acceptance",
                       stats=DraftLengthStats),
    "mtad-tree": MethodSpec("mtad-tree", mtad.decode_tree, mtad.MTADOptions, needs_draft=True, lossless=False,
                            description="MTAD with the whole beam tree verified in one forward",
                            stats=DraftLengthStats),
    "pld": MethodSpec("pld", pld.decode, pld.PLDOptions, needs_draft=False, lossless=True,
                      description="prompt lookup decoding: drafts copied from earlier text, no draft model"),
    "pass": MethodSpec("pass", pass_.decode, pass_.PaSSOptions, needs_draft=False, lossless=True,
                       description="parallel speculative sampling with learned lookahead embeddings",
                       stats=pass_.PaSSStats),
    "ppd": MethodSpec("ppd", ppd.decode, ppd.PPDOptions, needs_draft=False, lossless=True,
                      description="predictive pipelined decoding: early exit + a parallel branch worker (greedy)",
                      stats=PPDStats),
}


def get_method(name: str) -> MethodSpec:
    try:
        return METHODS[name]
    except KeyError:
        raise TokenleapError(f"unknown method {name!r}; available: {', '.join(METHODS)}") from None
