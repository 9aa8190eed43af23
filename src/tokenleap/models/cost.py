"""What a decoding forward costs on this machine: the unit every method's speed is made of.

A multi-token method pays for verifying r rows in one forward and gains the tokens it
accepts, so the curve "r rows cost c(r) x one row" decides whether it can win here.
"""

from __future__ import annotations

import time

import torch

from .hardware import synchronize
from .loading import Model

CURVE_ROWS = (1, 2, 4, 8, 16)


@torch.no_grad()
def forward_ms(model: Model, rows: int = 1, context: int = 256, rounds: int = 30) -> float:
    """Median milliseconds of one forward over `rows` new positions after `context` cached ones
    (each round rolls the cache back, so every round sees the same context)."""
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
        runner.forward(cache, new)
        synchronize(device)
        if i >= 5:  # the first few are warm-up
            times.append(time.perf_counter() - start)
        cache.rollback(context)
    return 1000 * sorted(times)[len(times) // 2]


def forward_curve(model: Model, rows: tuple[int, ...] = CURVE_ROWS, context: int = 256,
                  rounds: int = 20) -> dict[str, float]:
    """{"1": ms, "2": ms, ...}: one forward's cost by the number of new rows."""
    return {str(r): round(forward_ms(model, r, context, rounds), 3) for r in rows}
