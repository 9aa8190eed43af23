"""Pieces shared by the trainers: progress bars, checkpoints with resume, seeding."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..models.hardware import auto_dtype, cpu_caps


def progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))


def mixed_precision(device: torch.device | str = "cpu") -> torch.autocast:
    """bf16 autocast where this hardware computes bf16 natively; plain fp32 elsewhere (on a CPU
    without native bf16, emulated bf16 would only make training several times slower)."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_caps().native_bf16)
    return torch.autocast(device.type, dtype=auto_dtype(device), enabled=device.type == "cuda")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically: a run killed mid-save keeps its previous checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    return torch.load(path, weights_only=False) if path.is_file() else None

