"""Weight layouts for the lean runner's matmuls, and the measured choice between them.

A layout is how a weight is stored for `linear`:
- `dense`: the tensor as it is, through `F.linear`. Runs everywhere.
- `onednn`: pre-packed once by oneDNN (`mkldnn._reorder_linear_weight`), run by its
  `_linear_pointwise`. On CPUs this avoids re-laying-out the weight on every call: for fp32 it
  makes several-row forwards far cheaper (AVX2: 8 rows cost ~1.3x one row instead of ~1.8x);
  for bf16 it needs oneDNN's bf16 kernels (AVX-512 or AVX-NE-CONVERT) and is bit-identical to
  `F.linear`.

Which layout is fastest depends on the CPU, the dtype, the thread count and the matrix shapes,
so it is measured at load over the model's own matrices (one and eight rows) and the winner is
cached per machine and model shape under the cache home: the next load measures nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import TokenleapError
from .hardware import CpuCaps, cpu_caps, dtype_name, synchronize
from .registry import cache_home

LAYOUTS = ("dense", "onednn")
MEASURE_BYTES = 96 << 20  # weights timed per layout: past the caches, so memory-bound as in decoding
MEASURE_ROWS = (1, 8)


def available_layouts(dtype: torch.dtype, device: torch.device, caps: CpuCaps | None = None) -> list[str]:
    """Layouts that run on this device and dtype, `dense` first."""
    caps = caps or cpu_caps()
    if device.type != "cpu" or not caps.onednn:
        return ["dense"]
    if dtype == torch.float32 or (dtype == torch.bfloat16 and caps.onednn_bf16):
        return ["dense", "onednn"]
    return ["dense"]


def pack(weight: torch.Tensor, layout: str) -> torch.Tensor:
    """The weight stored for `layout` (see the module docstring)."""
    if layout == "dense":
        return weight
    if layout == "onednn":
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 1)
    raise TokenleapError(f"unknown kernel layout {layout!r}; use one of {', '.join(LAYOUTS)}")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear over a weight in any layout."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


@torch.no_grad()
def batch_invariant(weights: list[torch.Tensor], rows: tuple[int, ...] = (2, 3, 4, 8)) -> bool:
    """True when `linear` gives each row the same bits alone as inside a batch of `rows` rows,
    for every one of these matrices. Kernels may split the reduction differently by row count
    (seen for bf16 with K = 1536 on an AMD EPYC, not on an Intel Xeon): then results computed
    several rows at a time can differ in the last bit from one-row results."""
    gen = torch.Generator().manual_seed(0)
    for w in weights:
        x = torch.randn(max(rows), w.shape[1], generator=gen).to(w.dtype)
        alone = torch.cat([linear(x[i:i + 1], w) for i in range(max(rows))])
        if any(not torch.equal(linear(x[:m], w), alone[:m]) for m in rows):
            return False
    return True


# ---- the measured choice -----------------------------------------------------------------

def kernels_file() -> Path:
    return cache_home() / "kernels.json"


def choice_key(weights: list[torch.Tensor], dtype: torch.dtype, device: torch.device) -> str:
    """Machine, software, threads, dtype and the matrices' shapes: what the winner depends on."""
    caps = cpu_caps()
    shapes = hashlib.sha256(json.dumps([list(w.shape) for w in weights]).encode()).hexdigest()[:12]
    return (f"{caps.model}|{caps.isa}|fallback={int(caps.forced_fallback)}|torch={torch.__version__}"
            f"|threads={torch.get_num_threads()}|{dtype_name(dtype)}|{device}|shapes={shapes}")


def _measure_subset(weights: list[torch.Tensor]) -> list[torch.Tensor]:
    """Distinct matrices totalling about MEASURE_BYTES (all of them for a small model)."""
    subset, total = [], 0
    for w in weights:
        subset.append(w)
        total += w.numel() * w.element_size()
        if total >= MEASURE_BYTES:
            break
    return subset


@torch.no_grad()
def time_layout(weights: list[torch.Tensor], layout: str, rows: int, repeats: int = 5) -> float:
    """Best-of-`repeats` milliseconds of `linear` over every matrix with `rows` input rows."""
    packed = [pack(w, layout) for w in weights]
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype, device=w.device) for w in weights}
    best = float("inf")
    for _ in range(repeats + 1):  # the first pass warms up
        synchronize(weights[0].device)
        start = time.perf_counter()
        for w in packed:
            linear(inputs[w.shape[1]], w)
        synchronize(weights[0].device)
        best = min(best, time.perf_counter() - start)
    return best * 1000


def choose_layout(weights: list[torch.Tensor], dtype: torch.dtype, device: torch.device) -> tuple[str, dict]:
    """The fastest available layout for these matrices here, and how it was decided.

    Measured once per key (see `choice_key`) and cached in kernels.json; a layout is judged
    by its one-row plus eight-row time, since decoding runs one row and verification several."""
    layouts = available_layouts(dtype, device)
    if len(layouts) == 1:
        return layouts[0], {"layout": layouts[0], "measured": False, "reason": "the only layout available"}
    key = choice_key(weights, dtype, device)
    cached = _read_choices().get(key)
    if cached and cached.get("layout") in layouts:
        return cached["layout"], {**cached, "cached": True}
    subset = _measure_subset(weights)
    times = {layout: {str(r): round(time_layout(subset, layout, r), 3) for r in MEASURE_ROWS} for layout in layouts}
    best = min(layouts, key=lambda layout: sum(times[layout].values()))
    record = {"layout": best, "measured": True, "ms": times, "matrices": len(subset)}
    _write_choice(key, record)
    return best, {**record, "cached": False}


def _read_choices() -> dict:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(kernels_file().read_text())
        return data if isinstance(data, dict) else {}
    return {}


def _write_choice(key: str, record: dict) -> None:
    """Add one choice to kernels.json (atomically: a crash never leaves half a file)."""
    path = kernels_file()
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        choices = _read_choices()
        choices[key] = record
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(choices, indent=1, sort_keys=True))
        tmp.replace(path)
