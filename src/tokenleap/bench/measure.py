"""Timing and recording one generation: the timed call (a tokenleap method or an HF anchor),
warm-up, forward costs, the law check's PIT values, and results.json written as records arrive."""

from __future__ import annotations

import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..decoding.stats import DecodeStats
from ..decoding.warping import Sampling
from ..generation import generate
from ..models.cost import forward_ms
from ..models.hardware import cpu_model, synchronize
from ..models.loading import Model
from .anchors import hf_generate
from .energy import EnergyMeter
from .llamacpp import NAME as LLAMACPP, llamacpp_generate
from .prompts import Prompt
from .variants import BenchMethod

WARMUP_TOKENS = 16


def generate_once(method: BenchMethod, target: Model, draft: Model | None, prompt_ids: list[int],
                  max_new_tokens: int, sampling: Sampling, seed: int) -> tuple[list[int], DecodeStats]:
    if method.is_hf:
        return hf_generate(method, target, draft, prompt_ids, max_new_tokens, sampling, seed)
    if method.base == LLAMACPP:
        return llamacpp_generate(method, target, prompt_ids, max_new_tokens, sampling, seed)
    result = generate(prompt_ids, method=method.base, model=target, draft=draft if method.needs_draft else None,
                      max_new_tokens=max_new_tokens, temperature=sampling.temperature, top_k=sampling.top_k,
                      top_p=sampling.top_p, seed=seed, **method.options)
    result.stats.method = method.name
    return result.token_ids, result.stats


def machine_info() -> dict[str, Any]:
    return {"hostname": platform.node(), "platform": platform.platform(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}


def forward_costs(target: Model, draft: Model | None) -> dict[str, float]:
    """Target (and draft) decoding-forward times and the draft's cost relative to the target."""
    costs = {"target_ms": forward_ms(target)}
    if draft is not None and draft is not target:
        costs["draft_ms"] = forward_ms(draft)
        costs["draft_ratio"] = costs["draft_ms"] / costs["target_ms"]
    return costs


class Recorder:
    """Holds the results and writes results.json atomically, so an interrupted or crashed run
    still leaves every finished record on disk."""

    def __init__(self, out: Path, config: dict[str, Any], methods: list[BenchMethod]) -> None:
        self.out = out
        self.results: dict[str, Any] = {"status": "running", "config": config,
                                        "methods": [m.info() for m in methods], "summary": {}, "per_prompt": []}

    def add(self, record: dict[str, Any]) -> None:
        self.results["per_prompt"].append(record)

    def save(self, status: str | None = None) -> Path:
        from .report import save_results, summarize

        if status:
            self.results["status"] = status
        self.results["summary"] = summarize(self.results)
        self.out.mkdir(parents=True, exist_ok=True)
        return save_results(self.results, self.out / "results.json")


PIT_SEED_OFFSET = 0x5EED_0000


def pit_generator(seed: int) -> torch.Generator:
    """The law check's own uniforms for a record generated with `seed`: another stream than the
    method's draws, since correlated with them the check would see structure that is not there."""
    return torch.Generator().manual_seed(PIT_SEED_OFFSET + seed)


def pit_record(pit: list[float]) -> list[float | None]:
    """PIT values as stored: 5 decimals (far finer than a KS test resolves), None for NaN
    (a token outside the law's support; JSON has no NaN)."""
    return [None if math.isnan(u) else round(u, 5) for u in pit]


def measure(method: BenchMethod, prompt: Prompt, prompt_ids: list[int] | str, repeat: int, seed: int,
            run: Callable[[list[int], int], tuple[list[int], DecodeStats]], meter: EnergyMeter,
            score: Callable[[list[int], list[int], int], tuple[float, list[float]]] | None = None,
            device: torch.device | str = "cpu",
            predict: Callable[[DecodeStats], float | None] | None = None) -> dict[str, Any]:
    """One timed generation as a per_prompt record; any exception becomes the record's error.
    After the clock stops: `score` (sampling runs: perplexity and the law check's PIT values) and
    `predict` (the cost model's time for the run, `stats.predicted_ms`)."""
    record: dict[str, Any] = {"question_id": prompt.question_id, "category": prompt.category,
                              "prompt_index": prompt.index, "method": method.name, "repeat": repeat,
                              "seed": seed, "tokens": 0, "wall_s": 0.0, "energy_j": 0.0, "token_ids": [],
                              "stats": None, "ppl": None, "error": None}
    if isinstance(prompt_ids, str):  # the prompt itself is unusable: every method fails it
        record["error"] = prompt_ids
        return record
    try:
        synchronize(device)
        energy0, start = meter.read(), time.perf_counter()
        token_ids, stats = run(prompt_ids, seed)
        synchronize(device)  # queued device work belongs to this generation
        wall = time.perf_counter() - start
        record.update(tokens=len(token_ids), wall_s=wall, energy_j=meter.read() - energy0, token_ids=token_ids)
        stats.wall_s = wall  # the harness's clock, identical for every method
        if predict is not None:
            stats.predicted_ms = predict(stats)
        record["stats"] = stats.to_dict()
        if score is not None and token_ids:
            record["ppl"], pit = score(prompt_ids, token_ids, seed)
            record["pit"] = pit_record(pit)
    except Exception as exc:  # noqa: BLE001 - one bad prompt must not end the run
        record["error"] = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return record


def warm_up(methods: list[BenchMethod], run_method: Callable[..., Any], prompt_ids: list[int],
            rounds: int) -> list[str]:
    """A few untimed generations per method (allocator, caches, lazy init); errors are only noted,
    since a method that fails here will be reported failed prompt by prompt anyway."""
    errors = []
    for _ in range(rounds):
        for m in methods:
            try:
                run_method(m, prompt_ids, 0, WARMUP_TOKENS)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{m.name}: {type(exc).__name__}: {exc}".splitlines()[0])
    return errors
