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

from . import native
from .hardware import one_intra_op_thread, synchronize
from .kernels import choice_key, read_json_cache, write_json_cache
from .loading import Model
from .registry import cache_home

if TYPE_CHECKING:
    from ..decoding.stats import DecodeStats

CURVE_ROWS = (1, 2, 4, 8, 16)
BATCHES = (2, 4, 8)  # beams: a draft step over this many sequences, one new position each
MEASURE_VERSION = 3  # how curves are measured (part of their cache key): 3 = two sweeps, monotone


class _Probe:
    """One forward shape (batch x rows new positions after `context` cached ones), timed again
    and again: each time the cache is rolled back, so every time sees the same context."""

    def __init__(self, model: Model, rows: int, context: int, batch: int = 1) -> None:
        self.runner, self.context = model.runner, context
        device = self.runner.device
        self.cache = self.runner.new_cache(batch, context + rows + 8)
        gen = torch.Generator().manual_seed(0)
        prompt = torch.randint(0, self.runner.vocab_size, (1, context), generator=gen)
        self.runner.forward(self.cache, prompt.expand(batch, -1).to(device))
        self.new = torch.randint(0, self.runner.vocab_size, (batch, rows), generator=gen).to(device)

    @torch.no_grad()
    def seconds(self, then: "Callable[[torch.Tensor], object] | None" = None) -> float:
        device = self.runner.device
        synchronize(device)
        start = time.perf_counter()
        logits = self.runner.forward(self.cache, self.new)
        if then is not None:
            then(logits)
        synchronize(device)
        self.cache.rollback(self.context)
        return time.perf_counter() - start


WARMUP = 5  # untimed rounds first (allocator, kernel primitives for the shape)


def forward_ms(model: Model, rows: int = 1, context: int = 256, rounds: int = 30,
               then: "Callable[[torch.Tensor], object] | None" = None, batch: int = 1) -> float:
    """Median milliseconds of one forward over `rows` new positions (in each of `batch` rows)
    after `context` cached ones; with `then`, of the forward plus `then(logits)` (what a
    decoding step does with them)."""
    return forward_curve(model, (rows,), context, rounds, then, batch)[str(rows)]


def forward_curve(model: Model, rows: tuple[int, ...] = CURVE_ROWS, context: int = 256,
                  rounds: int = 20, then: "Callable[[torch.Tensor], object] | None" = None,
                  batch: int = 1, passes: int = 2) -> dict[str, float]:
    """{"1": ms, "2": ms, ...}: one forward's cost (with `then`, a step's: see `forward_ms`) by
    the number of new rows. Each row count is timed `rounds` times in a row, as decoding runs
    them (alternating shapes costs ~10% more per step here), in `passes` sweeps; the lowest
    median of the sweeps is kept, so that a slow spell of the machine (another process, the
    clock) in one sweep does not bend the curve. More rows never cost less than fewer: a median
    that says so is noise, and the larger count's is taken for both."""
    probes = {r: _Probe(model, r, context, batch) for r in rows}
    best = {r: float("inf") for r in rows}
    for _ in range(passes):
        for r, probe in probes.items():
            times = [probe.seconds(then) for _ in range(WARMUP + rounds)][WARMUP:]
            best[r] = min(best[r], 1000 * sorted(times)[len(times) // 2])
    curve, cheapest = {}, float("inf")
    for r in sorted(rows, reverse=True):
        cheapest = min(cheapest, best[r])
        curve[r] = cheapest
    return {str(r): round(curve[r], 3) for r in rows}


def costs_file():
    return cache_home() / "costs.json"


@functools.lru_cache(maxsize=1)
def forward_code() -> str:
    """A digest of the code a forward runs (the runners and kernels): a cost measured with other
    code is stale (fp32 attention alone changed a bf16 step by 5-8%)."""
    from . import hf, kernels, layered, llama

    text = "".join(Path(m.__file__).read_text() for m in (hf, kernels, layered, llama, native))
    text += native.SOURCE.read_text()
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def cost_key(model: Model) -> str:
    """What a model's forward cost depends on: what the kernel choice depends on (machine,
    software, threads, dtype, device, its weights' shapes), plus quantization, layout and the
    forward's own code."""
    key = choice_key(list(model.hf_model.parameters()), model.dtype, model.device)
    return (f"{key}|quant={model.quant}|{model.runtime()['kernels']}|native={int(native.available())}"
            f"|code={forward_code()}")


def _pick_per_row(logits: torch.Tensor) -> None:
    """What a decoding step does with a forward's logits: one distribution and one pick per
    row (greedy: a one-hot and an argmax over the vocabulary), the copy to the CPU included."""
    rows = logits.reshape(-1, logits.shape[-1]).float()
    torch.nn.functional.one_hot(rows.argmax(-1), rows.shape[-1]).argmax(-1).tolist()


def measured_curve(model: Model) -> dict[int, float]:
    """A decoding step's cost by row count (a forward and the picks from its logits; for a
    135M model the picks are ~5% of a target step and ~30% of a small draft's): from
    costs.json, else measured now (a few seconds) and written there; kept by the model."""
    def measure() -> dict[int, float]:
        key = f"step|m{MEASURE_VERSION}|" + cost_key(model)
        cached = read_json_cache(costs_file()).get(key)
        if not cached:
            cached = forward_curve(model, rounds=10, then=_pick_per_row)
            write_json_cache(costs_file(), key, cached)
        return {int(r): float(ms) for r, ms in cached.items()}

    return model.memo(("cost-curve",), measure)


def measured_batch_curve(model: Model) -> dict[int, float]:
    """A decoding step over `batch` sequences of one new position each, by batch (BATCHES): what
    MTAD's beams cost a draft (more than as many positions of one sequence: each has its own
    cache to attend over). From costs.json, else measured now and written there; kept by the model."""
    def measure() -> dict[int, float]:
        key = f"step-batch|m{MEASURE_VERSION}|" + cost_key(model)
        cached = read_json_cache(costs_file()).get(key)
        if not cached:
            cached = {str(b): forward_ms(model, 1, rounds=10, then=_pick_per_row, batch=b) for b in BATCHES}
            write_json_cache(costs_file(), key, cached)
        return {int(b): float(ms) for b, ms in cached.items()}

    return model.memo(("cost-batch-curve",), measure)


def one_thread_ms(model: Model, beside: int = 3) -> float:
    """A one-row decoding step on one intra-op thread while another thread runs `beside`-row
    forwards: what PPD's main stream costs, its branch sharing the machine's memory bandwidth
    and the interpreter (alone on an idle core it is ~10% cheaper here). From costs.json, else
    measured now (a second or two) and written there; kept by the model."""
    def measure() -> float:
        key = f"step-1thread-beside-{beside}|m{MEASURE_VERSION}|" + cost_key(model)
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

    def busy() -> None:
        runner = model.runner
        cache = runner.new_cache(1, 256 + beside + 8)
        runner.forward(cache, torch.zeros(1, 256, dtype=torch.long, device=runner.device))
        new = torch.zeros(1, beside, dtype=torch.long, device=runner.device)
        while not stop.is_set():
            runner.forward(cache, new)
            cache.rollback(256)

    try:
        with ThreadPoolExecutor(1, initializer=one_intra_op_thread) as timed, \
                ThreadPoolExecutor(1, initializer=one_intra_op_thread) as other:
            load = other.submit(busy)
            try:
                return timed.submit(forward_ms, model, 1, 256, 10, _pick_per_row).result()
            finally:
                stop.set()
                load.result()
    finally:
        torch.set_num_threads(threads)  # set_num_threads in a worker also changes new threads' default


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
    """Milliseconds of a target forward over r rows (the measured curve) and of one draft step;
    with the draft's own curve, of a draft forward over r rows (its catch-up after plain steps: a
    draft that sat out k target steps feeds k + 1 tokens before it drafts again); with its batch
    curve, of a draft step over b sequences (MTAD's beams)."""

    curve: dict[int, float]
    draft_ms: float = 0.0
    draft_curve: dict[int, float] | None = None
    draft_batch: dict[int, float] | None = None

    @classmethod
    def of(cls, target: Model, draft: Model | None = None, batched: bool = False) -> "CostModel":
        if draft is None:
            return cls(measured_curve(target))
        drafts = measured_curve(draft)
        return cls(measured_curve(target), drafts[1], drafts, measured_batch_curve(draft) if batched else None)

    def target_ms(self, rows: int) -> float:
        return interpolate(self.curve, rows)

    def draft_rows_ms(self, rows: int) -> float:
        """A draft forward over `rows` rows (its one-row step without a curve of its own)."""
        return interpolate(self.draft_curve, rows) if self.draft_curve else self.draft_ms * rows

    def draft_step_ms(self, batch: int, rows: int = 1) -> float:
        """A draft forward over `rows` new positions in each of `batch` sequences."""
        if batch == 1:
            return self.draft_rows_ms(rows)
        together = self.draft_rows_ms(batch * rows)
        if not self.draft_batch:  # no batch curve: as many positions of one sequence
            return together
        # Measured for one position per sequence; more positions scale as they do in one sequence.
        return interpolate({1: self.draft_ms, **self.draft_batch}, batch) * together / self.draft_rows_ms(batch)

    def round_ms(self, drafts: int, catch_up: int = 0, width: int = 1, verified: int | None = None) -> float:
        """A speculative round: `drafts` draft steps over `width` sequences each (MTAD's beams;
        the first one also feeds the catch_up tokens the draft sat out, in every sequence), then
        one target forward over `verified` rows (default drafts + 1: a chain and its pending token)."""
        if not drafts:
            return self.target_ms(1)
        ms = self.target_ms(drafts + 1 if verified is None else verified)
        if width == 1 and not catch_up:
            return ms + drafts * self.draft_ms
        return ms + self.draft_step_ms(width, catch_up + 1) + (drafts - 1) * self.draft_step_ms(width)

    def predict_ms(self, forward_rows: dict[str, dict[str, int]]) -> float:
        """The time of a run's forwards (`DecodeStats.forward_rows`: "rows" or "batch x rows"),
        each priced on its curve."""
        total = 0.0
        for model, per in forward_rows.items():
            for shape, n in per.items():
                batch, _, rows = shape.rpartition("x")
                if model == "target":
                    total += n * self.target_ms(int(rows) * int(batch or 1))
                else:
                    total += n * self.draft_step_ms(int(batch or 1), int(rows))
        return total


def predicted_ms(stats: "DecodeStats", target: Model, draft: Model | None = None) -> float | None:
    """The cost model's time for a finished run: the method's own prediction where it made one
    (PPD), else its forwards priced on the measured curves. None for a run with no forwards on
    record (an anchor: HF generate, llama.cpp)."""
    if stats.predicted_ms is not None or not stats.forward_rows:
        return stats.predicted_ms
    batched = any("x" in shape for shape in stats.forward_rows.get("draft", {}))
    return CostModel.of(target, draft if "draft" in stats.forward_rows else None, batched).predict_ms(stats.forward_rows)
