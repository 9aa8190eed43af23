"""Per-run statistics every method fills in the same way."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DecodeStats:
    method: str
    prompt_tokens: int = 0
    new_tokens: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0
    iterations: int = 0  # verification rounds (one per target forward for most methods)
    proposed: int = 0  # draft tokens put to the target
    accepted: int = 0  # draft tokens the target kept
    proposed_at: list[int] = field(default_factory=list)  # per draft position
    accepted_at: list[int] = field(default_factory=list)
    accepted_hist: dict[int, int] = field(default_factory=dict)  # accepted drafts per round -> count
    wall_s: float = 0.0
    first_token_s: float | None = None
    extra: dict[str, float] = field(default_factory=dict)  # method-specific counters (e.g. PaSS drafting calls)
    # Where the target ran: "cpu"/"cuda:0", "bf16"/"fp32"/"fp16", and its weight layout
    # ("dense", "onednn"; "hf" for the transformers forward).
    device: str = ""
    dtype: str = ""
    kernels: str = ""

    def record_round(self, proposed: int, accepted: int) -> None:
        """One verification round: `proposed` drafts offered, the first `accepted` kept."""
        self.iterations += 1
        self.proposed += proposed
        self.accepted += accepted
        while len(self.proposed_at) < proposed:
            self.proposed_at.append(0)
            self.accepted_at.append(0)
        for i in range(proposed):
            self.proposed_at[i] += 1
            self.accepted_at[i] += i < accepted
        self.accepted_hist[accepted] = self.accepted_hist.get(accepted, 0) + 1

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
