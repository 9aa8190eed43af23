"""Speculative sampling with a draft model (Leviathan et al. 2023; Chen et al. 2023).

The draft proposes gamma tokens one by one (`drafters.draft_model`); the target scores all of
them in one forward. Acceptance rule (`decoding.accept.speculative`, lossless for any draft):
    accept draft d_i with probability min(1, p_i(d_i) / q_i(d_i)); at the first rejection emit
    z ~ norm(max(0, p_i - q_i)) and stop; if all are accepted emit a bonus z ~ p_(gamma+1).
At temperature 0 both p and q are one-hot, so this is "accept while the draft equals the
target's argmax, then emit the target's argmax" — greedy decoding, exactly.

gamma=0 (the default) chooses each round's length from this machine's measured costs and the
acceptance so far (`decoding.adaptive`), plain target steps included when drafting does not
pay; the choice depends only on past rounds, so the rule above stays lossless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from ..decoding import accept
from ..decoding.adaptive import DraftLength
from ..decoding.context import DecodeContext
from ..decoding.speculate import chain_step, speculative_decode
from ..decoding.stats import MethodStats
from ..drafters.draft_model import DraftModelDrafter
from ..markdown import fmt, table
from ..models.cost import CostModel
from ..options import Options, option

AUTO_MOST = 8  # gamma=auto drafts at most this many per round


@dataclass
class SPSOptions(Options):
    gamma: int = option(0, "draft tokens per round (at most); 0 = auto: chosen every round from this "
                           "machine's measured forward costs and the acceptance so far", minimum=0)
    # Still lossless: when to stop depends on the draft alone. (HF's assisted generation
    # calls it assistant_confidence_threshold.)
    stop_below: float = option(0.0, "end a round's drafting once the draft gives its own proposal less than "
                                    "this probability; 0 = always draft gamma", minimum=0, below=1)


@dataclass
class SPSStats(MethodStats):
    """With gamma=auto: what was chosen, and what the cost model predicted for it."""

    drafts_chosen: dict[str, int] = field(default_factory=dict)  # draft length -> rounds; "0" = plain steps
    alpha: float = 0.0  # the acceptance estimate at the end
    predicted_ms: float = 0.0  # the cost model's time for the steps taken
    target_ms: float = 0.0  # its one-row target forward (what `ar` pays per token)

    @classmethod
    def report(cls, runs: dict[str, list[dict[str, Any]]], results: dict[str, Any]) -> list[str]:
        rows = []
        for name, recs in runs.items():
            figures = [r["stats"]["method_stats"] for r in recs]
            predicted = sum(f["predicted_ms"] for f in figures)
            ar_ms = sum(r["tokens"] * f["target_ms"] for r, f in zip(recs, figures))
            chosen: dict[str, int] = {}
            for f in figures:
                for g, n in f["drafts_chosen"].items():
                    chosen[g] = chosen.get(g, 0) + n
            lengths = ", ".join(f"{g}: {n}" for g, n in sorted(chosen.items(), key=lambda kv: int(kv[0])))
            rows.append([name, fmt(ar_ms / predicted if predicted else None), fmt(results["summary"][name]["speedup"]),
                         lengths])
        return ["", "## Cost model: predicted vs measured", "",
                "Predicted: `ar`'s one-row forwards for the same tokens over the cost model's time for the "
                "steps taken (measured forward costs, realised acceptance); measured: tok/s against `ar`.", "",
                *table(["method", "predicted speedup", "measured speedup", "draft lengths chosen (rounds)"], rows)]


def decode(ctx: DecodeContext) -> Iterator[list[int]]:
    opts = ctx.options
    length = DraftLength(CostModel.of(ctx.target, ctx.draft), AUTO_MOST) if opts.gamma == 0 else None
    drafter = DraftModelDrafter(ctx, opts.gamma, opts.stop_below, length)
    rule = chain_step(lambda draft, p: accept.speculative(draft.tokens, draft.q, p, ctx.generator))
    try:
        yield from speculative_decode(ctx, drafter, rule)
    finally:  # also when the driver stops early (EOS, a stop string, a cancelled stream)
        if length is not None:
            ctx.stats.method_stats = SPSStats(dict(length.chosen), length.alpha, length.predicted_ms,
                                              length.cost.target_ms(1))
