"""What a decoding forward costs on this machine: the unit every method's speed is made of.

A multi-token method pays for verifying r rows in one forward and gains the tokens it
accepts, so the curve "r rows cost c(r) x one row" decides whether it can win here.
`CostModel` holds that curve for a target (and a draft's step cost), measured once per
machine, model, dtype/quantization, device and thread count, and cached in costs.json.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from .hardware import synchronize
from .kernels import choice_key, read_json_cache, write_json_cache
from .loading import Model
from .registry import cache_home

if TYPE_CHECKING:
    from ..decoding.stats import DecodeStats

CURVE_ROWS = (1, 2, 4, 8, 16)


@torch.no_grad()
def forward_ms(model: Model, rows: int = 1, context: int = 256, rounds: int = 30,
               then: "Callable[[torch.Tensor], object] | None" = None) -> float:
    """Median milliseconds of one forward over `rows` new positions after `context` cached ones
    (each round rolls the cache back, so every round sees the same context); with `then`, of
    the forward plus `then(logits)` (what a decoding step does with them)."""
    runner = model.runner
    device = runner.device
    cache = runner.new_cache(1, context + rows + 8)
    gen = torch.Generator().manual_seed(0)
    runner.forward(cache, torch.randint(0, runner.vocab_size, (1, context), generator=gen).to(device))
    new = torch.randint(0, runner.vocab_size, (1, rows), generator=gen).to(device)
    times = []
    for i in range(rounds + 5):
        synchronize(device)
        start = time.perf_counter()
        logits = runner.forward(cache, new)
        if then is not None:
            then(logits)
        synchronize(device)
        if i >= 5:  # the first few are warm-up
            times.append(time.perf_counter() - start)
        cache.rollback(context)
    return 1000 * sorted(times)[len(times) // 2]


def forward_curve(model: Model, rows: tuple[int, ...] = CURVE_ROWS, context: int = 256,
                  rounds: int = 20, then: "Callable[[torch.Tensor], object] | None" = None) -> dict[str, float]:
    """{"1": ms, "2": ms, ...}: one forward's cost (with `then`, a step's: see `forward_ms`) by
    the number of new rows."""
    return {str(r): round(forward_ms(model, r, context, rounds, then), 3) for r in rows}


def costs_file():
    return cache_home() / "costs.json"


@functools.lru_cache(maxsize=1)
def forward_code() -> str:
    """A digest of the code a forward runs (the runners and kernels): a cost measured with other
    code is stale (fp32 attention alone changed a bf16 step by 5-8%)."""
    from . import hf, kernels, layered, llama

    text = "".join(Path(m.__file__).read_text() for m in (hf, kernels, layered, llama))
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def cost_key(model: Model) -> str:
    """What a model's forward cost depends on: what the kernel choice depends on (machine,
    software, threads, dtype, device, its weights' shapes), plus quantization, layout and the
    forward's own code."""
    key = choice_key(list(model.hf_model.parameters()), model.dtype, model.device)
    return f"{key}|quant={model.quant}|{model.runtime()['kernels']}|code={forward_code()}"


def _pick_per_row(logits: torch.Tensor) -> None:
    """What a decoding step does with a forward's logits: one distribution and one pick per
    row (greedy: a one-hot and an argmax over the vocabulary), the copy to the CPU included."""
    rows = logits[0].float()
    torch.nn.functional.one_hot(rows.argmax(-1), rows.shape[-1]).argmax(-1).tolist()


def measured_curve(model: Model) -> dict[int, float]:
    """A decoding step's cost by row count (a forward and the picks from its logits; for a
    135M model the picks are ~5% of a target step and ~30% of a small draft's): from
    costs.json, else measured now (a few seconds) and written there; kept by the model."""
    def measure() -> dict[int, float]:
        key = "step|" + cost_key(model)
        cached = read_json_cache(costs_file()).get(key)
        if not cached:
            cached = forward_curve(model, rounds=10, then=_pick_per_row)
            write_json_cache(costs_file(), key, cached)
        return {int(r): float(ms) for r, ms in cached.items()}

    return model.memo(("cost-curve",), measure)


def _one_thread() -> None:
    torch.set_num_threads(1)


def one_thread_ms(model: Model, beside: int = 3) -> float:
    """A one-row decoding step on one intra-op thread while another thread runs `beside`-row
    forwards: what PPD's main stream costs, its branch sharing the machine's memory bandwidth
    and the interpreter (alone on an idle core it is ~10% cheaper here). From costs.json, else
    measured now (a second or two) and written there; kept by the model."""
    def measure() -> float:
        key = f"step-1thread-beside-{beside}|" + cost_key(model)
        cached = read_json_cache(costs_file()).get(key)
        if not cached:
            cached = {"1": round(_contended_ms(model, beside), 3)}
            write_json_cache(costs_file(), key, cached)
        return float(cached["1"])

    return model.memo(("cost-1thread", beside), measure)


@torch.no_grad()
def _contended_ms(model: Model, beside: int) -> float:
    threads = torch.get_num_threads()  # initialises the caller's pool before the workers start
    stop = threading.Event()
    with ThreadPoolExecutor(1, initializer=_one_thread) as timed, \
            ThreadPoolExecutor(1, initializer=_one_thread) as other:
        def busy() -> None:
            runner = model.runner
            cache = runner.new_cache(1, 256 + beside + 8)
            runner.forward(cache, torch.zeros(1, 256, dtype=torch.long, device=runner.device))
            new = torch.zeros(1, beside, dtype=torch.long, device=runner.device)
            while not stop.is_set():
                runner.forward(cache, new)
                cache.rollback(256)

        load = other.submit(busy)
        try:
            ms = timed.submit(forward_ms, model, 1, 256, 10, _pick_per_row).result()
        finally:
            stop.set()
            load.result()
    torch.set_num_threads(threads)  # set_num_threads in a worker also changes new threads' default
    return ms


def interpolate(curve: dict[int, float], rows: int) -> float:
    """A cost curve's milliseconds at `rows`: linear between its points and beyond the last two."""
    xs = sorted(curve)
    if len(xs) == 1:
        return curve[xs[0]]
    i = min(max(bisect.bisect_left(xs, rows), 1), len(xs) - 1)
    x0, x1 = xs[i - 1], xs[i]
    y0, y1 = curve[x0], curve[x1]
    return max(y0 + (y1 - y0) * (rows - x0) / (x1 - x0), 1e-6)


@dataclass(frozen=True)
class CostModel:
    """Milliseconds of a target forward over r rows (the measured curve) and of one draft step,
    and, with the draft's own curve, of a draft forward over r rows (its catch-up after plain
    steps: a draft that sat out k target steps feeds k + 1 tokens before it drafts again)."""

    curve: dict[int, float]
    draft_ms: float = 0.0
    draft_curve: dict[int, float] | None = None

    @classmethod
    def of(cls, target: Model, draft: Model | None = None) -> "CostModel":
        if draft is None:
            return cls(measured_curve(target))
        drafts = measured_curve(draft)
        return cls(measured_curve(target), drafts[1], drafts)

    def target_ms(self, rows: int) -> float:
        return interpolate(self.curve, rows)

    def draft_rows_ms(self, rows: int) -> float:
        """A draft forward over `rows` rows (its one-row step without a curve of its own)."""
        return interpolate(self.draft_curve, rows) if self.draft_curve else self.draft_ms * rows

    def round_ms(self, drafts: int, catch_up: int = 0, width: int = 1, verified: int | None = None) -> float:
        """A speculative round: `drafts` draft steps over `width` rows each (MTAD's beams; the
        first one also feeds the catch_up tokens the draft sat out, in every row), then one
        target forward over `verified` rows (default drafts + 1: a chain and its pending token)."""
        if not drafts:
            return self.target_ms(1)
        ms = self.target_ms(drafts + 1 if verified is None else verified)
        if width == 1 and not catch_up:
            return ms + drafts * self.draft_ms
        return ms + self.draft_rows_ms(width * (catch_up + 1)) + (drafts - 1) * self.draft_rows_ms(width)

    def predict_ms(self, forward_rows: dict[str, dict[str, int]]) -> float:
        """The time of a run's forwards (`DecodeStats.forward_rows`): each priced on its curve."""
        curves = {"target": self.target_ms, "draft": self.draft_rows_ms}
        return sum(curves[model](int(rows)) * n for model, per in forward_rows.items() for rows, n in per.items())


def predicted_ms(stats: "DecodeStats", target: Model, draft: Model | None = None) -> float | None:
    """The cost model's time for a finished run: the method's own prediction where it made one
    (PPD), else its forwards priced on the measured curves. None for a run with no forwards on
    record (an anchor: HF generate, llama.cpp)."""
    if stats.predicted_ms is not None or not stats.forward_rows:
        return stats.predicted_ms
    return CostModel.of(target, draft if "draft" in stats.forward_rows else None).predict_ms(stats.forward_rows)
