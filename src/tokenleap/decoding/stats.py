"""Per-run statistics: one meaning per field, whichever method filled them in.

- `target_forwards`: passes of the target that end in its LM head, counted by the runner
  wrapper (`decoding.context.CountingRunner`), never by hand: every verification call, every
  plain step, PaSS's drafting calls, and for PPD each token's main stream (some start deep).
- `draft_forwards`: forwards of a draft model, counted the same way (sps, mtad: one per step,
  whatever the batch of beams). PaSS drafts inside target forwards and PPD's branches are
  partial target passes (`PPDStats.branches`): 0 for both.
- `iterations`: verification rounds, i.e. target forwards that judged at least one draft
  (PPD: tokens, each main stream judging the previous branch's candidates).
- `proposed` / `accepted`: draft tokens put to the target / kept by it. A tree counts every
  node it verified as proposed and the accepted path as accepted, so `acceptance_rate` is
  always "kept / verified". `proposed_at[i]` / `accepted_at[i]` count rounds that offered /
  kept a draft at depth i + 1 (a tree offers its every depth once per round).
- `forward_rows`: the forwards behind `target_forwards` / `draft_forwards` by shape, {"target":
  {"rows": count}, "draft": {...}}, "BxN" for N new positions in each of B sequences (MTAD's
  beams), what the cost model prices.
- `predicted_ms`: the cost model's time for this run (`models.cost.CostModel.predict_ms` over
  `forward_rows`, set by the bench), or the method's own prediction where its time is not the
  sum of its forwards (PPD: two threads).
- `method_stats`: the method's own typed record (`PaSSStats`, `PPDStats`, ...), or None. The
  bench report reads it through the method (`MethodStats.report`), never by key names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class MethodStats:
    """Base of a method's own figures: a dataclass of numbers, serialised with `asdict`."""

    @classmethod
    def report(cls, runs: dict[str, list[dict[str, Any]]], results: dict[str, Any]) -> list[str]:
        """Markdown lines for the bench report about every run of this kind: `runs` maps a run's
        name to its per-prompt records (each with `stats["method_stats"]` as `to_dict` wrote
        it); `results` is the whole bench result (summary included). None by default."""
        return []


@dataclass
class DecodeStats:
    method: str
    prompt_tokens: int = 0
    new_tokens: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0
    iterations: int = 0
    proposed: int = 0
    accepted: int = 0
    proposed_at: list[int] = field(default_factory=list)  # per draft depth
    accepted_at: list[int] = field(default_factory=list)
    accepted_hist: dict[int, int] = field(default_factory=dict)  # accepted drafts per round -> count
    wall_s: float = 0.0
    first_token_s: float | None = None
    forward_rows: dict[str, dict[str, int]] = field(default_factory=dict)
    predicted_ms: float | None = None
    method_stats: MethodStats | None = None
    # Where the target ran: "cpu"/"cuda:0", "bf16"/"fp32"/"fp16", and its weight layout
    # ("dense", "onednn"; "hf" for the transformers forward).
    device: str = ""
    dtype: str = ""
    kernels: str = ""

    def record_round(self, depth: int, accepted: int, nodes: int | None = None) -> None:
        """One verification round: drafts offered down to `depth` (`nodes` of them in a tree;
        a chain's nodes are its depth), and an accepted path of `accepted` drafts."""
        self.iterations += 1
        self.proposed += depth if nodes is None else nodes
        self.accepted += accepted
        while len(self.proposed_at) < depth:
            self.proposed_at.append(0)
            self.accepted_at.append(0)
        for i in range(depth):
            self.proposed_at[i] += 1
            self.accepted_at[i] += i < accepted
        self.accepted_hist[accepted] = self.accepted_hist.get(accepted, 0) + 1

    def record_forward(self, model: str, batch: int, rows: int) -> None:
        """One forward of `model` ("target" or "draft") over `rows` new positions in `batch` sequences."""
        per = self.forward_rows.setdefault(model, {})
        shape = f"{batch}x{rows}" if batch > 1 else str(rows)
        per[shape] = per.get(shape, 0) + 1

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def mean_accepted_length(self) -> float:
        """1 + accepted drafts per target forward (1.00 for autoregressive decoding)."""
        return 1.0 + self.accepted / self.target_forwards if self.target_forwards else 1.0

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.proposed if self.proposed else None

    @property
    def acceptance_by_position(self) -> list[float]:
        return [a / p if p else 0.0 for a, p in zip(self.accepted_at, self.proposed_at)]

    def to_dict(self) -> dict:
        out = asdict(self)
        out["accepted_hist"] = {str(k): v for k, v in sorted(self.accepted_hist.items())}
        out.update(tokens_per_s=self.tokens_per_s, mean_accepted_length=self.mean_accepted_length,
                   acceptance_rate=self.acceptance_rate, acceptance_by_position=self.acceptance_by_position)
        return out

    def summary(self) -> str:
        rate = "n/a" if self.acceptance_rate is None else f"{self.acceptance_rate:.2f}"
        return (f"{self.method}: {self.new_tokens} tokens in {self.wall_s:.2f}s ({self.tokens_per_s:.1f} tok/s), "
                f"target forwards {self.target_forwards}, draft forwards {self.draft_forwards}, "
                f"mean accepted length {self.mean_accepted_length:.2f}, acceptance rate {rate}"
                + (f" [{self.device} {self.dtype} {self.kernels}]" if self.dtype else ""))
