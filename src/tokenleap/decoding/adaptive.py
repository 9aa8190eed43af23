"""Each round's draft length, chosen from this machine's costs and the acceptance seen so far.

A round of g drafts costs g draft steps plus one target forward over g + 1 rows
(`models.cost.CostModel`, measured here). If each draft is accepted with probability alpha
until the first rejection, the round yields (1 - alpha^(g+1)) / (1 - alpha) tokens on average
(Leviathan et al. 2023). The length with the most expected tokens per millisecond wins; g = 0
is a plain target step (1 token per one-row forward), chosen when no length beats it, which is
honest on a machine or text where drafting does not pay. alpha is estimated online, per
request, from the rounds so far (accepted drafts / (accepted drafts + rejections), from a mild
prior), so the choice depends only on the past: a lossless method stays lossless.

While plain steps win, a round is tried anyway after EXPLORE_EVERY plain steps, so that a text
where drafts start to agree (a quote, code being repeated) is noticed; each try after which
plain steps still win doubles the wait (`Exploration`: a text that keeps not paying costs a
few tries, not one in eight steps). Only when drafting could pay at all, i.e. with every draft
accepted: when it could not (the draft costs nearly what the target does, as a quantized copy
of a small bf16 model can), exploring only loses time. A round after plain steps also pays the
draft's catch-up: it feeds the tokens it sat out in one forward over that many rows (on this
CPU an int8 draft over 9 rows costs ~2 one-row steps).

MTAD's beam drafter is priced the same way with `width` rows per draft step; its tree variant
verifies up to width x drafts nodes in one forward (`tree`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..markdown import table
from ..models.cost import CostModel
from .stats import MethodStats

PRIOR_ACCEPTED, PRIOR_REJECTED = 1.2, 0.8  # a prior alpha of 0.6 worth two drafts
EXPLORE_EVERY = 8
AUTO_MOST = 8  # gamma=auto drafts at most this many per round (sps, mtad)


@dataclass
class Exploration:
    """When to try the method anyway while plain steps win (sps, mtad): after `every` plain
    steps in a row, twice as many after each such try, back to EXPLORE_EVERY once the method
    wins on its own estimate."""

    every: int = EXPLORE_EVERY

    def due(self, plain_run: int) -> bool:
        """This would be plain step number plain_run + 1 in a row: try the method instead?"""
        return plain_run + 1 >= self.every

    def tried(self) -> None:
        self.every *= 2

    def won(self) -> None:
        self.every = EXPLORE_EVERY


def expected_tokens(alpha: float, drafts: int) -> float:
    """Tokens a round of `drafts` drafts yields on average (the accepted ones, plus one)."""
    return drafts + 1.0 if alpha >= 1 else (1 - alpha ** (drafts + 1)) / (1 - alpha)


@dataclass
class DraftLength:
    cost: CostModel
    most: int = AUTO_MOST  # never more drafts per round than this
    least: int = 1  # never fewer drafts in a round than this (MTAD: a block of 2 at least)
    width: int = 1  # rows per draft step (MTAD's beams)
    tree: bool = False  # every beam of every depth verified (mtad-tree): width x drafts nodes
    accepted: float = PRIOR_ACCEPTED
    rejected: float = PRIOR_REJECTED
    plain_run: int = 0  # plain steps in a row
    chosen: dict[str, int] = field(default_factory=dict)  # draft length -> rounds (0 = plain steps)
    catch_up: int = 0  # plain steps before the round being judged (the draft's catch-up)
    exploration: Exploration = field(default_factory=Exploration)
    _judged_at_plain: tuple[float, float] | None = field(default=None, repr=False)  # acceptance at the last plain step

    @property
    def alpha(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    def tokens_per_ms(self, drafts: int, alpha: float | None = None, catch_up: int | None = None) -> float:
        if not drafts:
            return 1.0 / self.cost.target_ms(1)
        alpha = self.alpha if alpha is None else alpha
        catch_up = self.plain_run if catch_up is None else catch_up
        return expected_tokens(alpha, drafts) / self.round_ms(drafts, catch_up)

    def round_ms(self, drafts: int, catch_up: int) -> float:
        verified = drafts * self.width + 1 if self.tree else None
        return self.cost.round_ms(drafts, catch_up, self.width, verified)

    def choose(self, room: int) -> int:
        """Drafts for the next round (0: a plain step), at most room - 1."""
        lengths = [0] + list(range(self.least, min(self.most, room - 1) + 1))
        # After a plain step with no round judged since, plain steps still win: the catch-up only
        # grew (and the room shrank), which makes every round dearer. Skip the search then: in a
        # run of plain steps it cost ~100 cost-curve lookups a token, ~1% of a step here.
        still_plain = self.plain_run > 0 and self._judged_at_plain == (self.accepted, self.rejected)
        best = 0 if still_plain else max(lengths, key=self.tokens_per_ms)
        plain = self.tokens_per_ms(0)
        if best:
            self.exploration.won()
        elif (len(lengths) > 1 and self.exploration.due(self.plain_run)
                # With the catch-up of the first exploration: were it too dear then, it always
                # would be (a longer plain run only lengthens it).
                and any(self.tokens_per_ms(g, 1.0, EXPLORE_EVERY - 1) > plain for g in lengths[1:])):
            best = max(lengths[1:], key=self.tokens_per_ms)
            self.exploration.tried()
        self.catch_up = self.plain_run  # what this round's first draft step feeds first
        self.plain_run = self.plain_run + 1 if best == 0 else 0
        self._judged_at_plain = (self.accepted, self.rejected) if best == 0 else None
        self.chosen[str(best)] = self.chosen.get(str(best), 0) + 1
        return best

    def update(self, proposed: int, accepted: int) -> None:
        """A round was judged: `accepted` of `proposed` drafts kept."""
        self.accepted += accepted
        self.rejected += accepted < proposed

    def stats(self) -> "DraftLengthStats":
        return DraftLengthStats(dict(self.chosen), self.alpha)


def best_length(cost: CostModel, alpha: float, most: int = AUTO_MOST, least: int = 1, width: int = 1,
                tree: bool = False) -> tuple[int, float]:
    """What gamma=auto settles on at acceptance `alpha` on `cost`'s curves (no catch-up): the
    draft length (0 = plain steps) and its expected speedup over plain steps."""
    length = DraftLength(cost, most, least=least, width=width, tree=tree)
    lengths = [0] + list(range(least, most + 1))
    best = max(lengths, key=lambda g: length.tokens_per_ms(g, alpha, 0))
    return best, length.tokens_per_ms(best, alpha, 0) / length.tokens_per_ms(0)


@dataclass
class DraftLengthStats(MethodStats):
    """A method with adaptive draft lengths (sps, mtad): what was chosen."""

    drafts_chosen: dict[str, int] = field(default_factory=dict)  # draft length -> rounds; "0" = plain steps
    alpha: float = 0.0  # the acceptance estimate at the end

    @classmethod
    def report(cls, runs: dict[str, list[dict[str, Any]]], results: dict[str, Any]) -> list[str]:
        rows = []
        for name, recs in runs.items():
            chosen: dict[str, int] = {}
            for r in recs:
                for g, n in r["stats"]["method_stats"]["drafts_chosen"].items():
                    chosen[g] = chosen.get(g, 0) + n
            rounds = sum(chosen.values())
            lengths = ", ".join(f"{g}: {n}" for g, n in sorted(chosen.items(), key=lambda kv: int(kv[0])))
            rows.append([name, f"{chosen.get('0', 0) / rounds:.2f}" if rounds else "–", lengths])
        return ["", "## Draft lengths chosen (auto)", "",
                *table(["method", "share of plain steps", "draft length: rounds"], rows)]
