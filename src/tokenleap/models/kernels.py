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

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import TokenleapError
from . import native
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


def linear(x: torch.Tensor, weight: "torch.Tensor | QuantWeight", bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear over a weight in any layout, quantized ones included."""
    if isinstance(weight, QuantWeight):
        return weight.linear(x, bias)
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def _fused_here(weight: "torch.Tensor | QuantWeight", x: torch.Tensor) -> bool:
    """Whether the step before `weight`'s matmul runs inside tokenleap's int8 kernel: its
    weights, fp32 rows."""
    return isinstance(weight, QuantWeight) and weight.native and x.dtype == torch.float32


def rms_norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, eps: float, weight: "torch.Tensor | QuantWeight",
                    bias: torch.Tensor | None, rms_norm: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                    ) -> torch.Tensor:
    """linear(rms_norm(x, norm_weight), weight, bias): one native call for fp32 rows and
    tokenleap's int8 weights, else exactly the two steps."""
    if _fused_here(weight, x):
        flat = x.reshape(-1, x.shape[-1])
        out = native.int8_rms_norm_linear(flat, norm_weight, eps, weight.data, weight.scales)
        out = out.reshape(*x.shape[:-1], weight.shape[0])
        return out if bias is None else out + bias
    return linear(rms_norm(x, norm_weight), weight, bias)


def swiglu_linear(gate_up: torch.Tensor, weight: "torch.Tensor | QuantWeight") -> torch.Tensor:
    """linear(silu(gate) * up, weight) for gate_up = [gate, up] on the last dimension: one native
    call for fp32 rows and tokenleap's int8 weights, else exactly these steps."""
    if _fused_here(weight, gate_up):
        out = native.int8_swiglu_linear(gate_up.reshape(-1, gate_up.shape[-1]), weight.data, weight.scales)
        return out.reshape(*gate_up.shape[:-1], weight.shape[0])
    gate, up = gate_up.chunk(2, dim=-1)
    return linear(F.silu(gate) * up, weight)


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


# ---- weight-only quantization ---------------------------------------------------------------
#
# Weights are stored in int8 (one scale per output channel) or int4 (groups of G input
# columns, an asymmetric scale and minimum per group); activations stay in the model's dtype.
# int8 runs tokenleap's own kernel where it builds (`native`: 2x PyTorch's for one row, at the
# memory bandwidth; batch-invariant; fp32 activations), else PyTorch's. PyTorch's CPU kernels
# (`_weight_int8pack_mm`, `_weight_int4pack_mm_for_cpu`) are vectorised for bf16 activations on
# AVX2 and AVX-512 alike, so on them a quantized model runs bf16 activations on every CPU
# (`quant_activations`). Quantization changes the model's numbers: it is never an automatic
# choice, only what the user asks for (`quant=`), and a quantized model is the target its
# methods are exact against.

QUANTS = ("none", "int8", "int4")
INT4_GROUPS = (32, 64, 128)


@dataclass(frozen=True)
class QuantWeight:
    """A [N, K] weight in int8 or int4, with what its kernel needs to compute x @ W^T."""

    kind: str  # "int8" | "int4"
    data: torch.Tensor  # int8 [N, K] (native: `native.pack_int8`'s layout); int4: the kernel's packed uint8
    scales: torch.Tensor  # int8: [N] (native: fp32); int4: scales and zeros [K/G, N, 2]
    group: int  # int4 group size (0 for int8)
    shape: tuple[int, int]  # (N, K) of the original weight
    native: bool = False  # int8 on tokenleap's own kernel

    @property
    def dtype(self) -> torch.dtype:
        return self.scales.dtype

    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        lead, flat = x.shape[:-1], x.reshape(-1, x.shape[-1])
        if self.native:
            out = native.int8_linear(flat, self.data, self.scales)
        elif self.kind == "int8":
            flat = flat.to(self.scales.dtype)
            out = torch.ops.aten._weight_int8pack_mm(flat, self.data, self.scales)
        else:
            out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat.to(self.scales.dtype), self.data, self.group,
                                                             self.scales)
        out = out.reshape(*lead, self.shape[0]).to(x.dtype)
        return out if bias is None else out + bias

    def dequantize(self) -> torch.Tensor:
        """The [N, K] weight these codes stand for (to check quality, or for the HF forward)."""
        if self.native:
            return native.unpack_int8(self.data).float() * self.scales[:, None]
        eye = torch.eye(self.shape[1], dtype=self.scales.dtype, device=self.scales.device)
        return self.linear(eye).t().contiguous()


class QuantLinear(torch.nn.Module):
    """An `nn.Linear` whose weight is a QuantWeight: what a transformers model's linears become
    under `quant=` on the HF runner (and in an HF self-draft), so its own forward runs the
    quantized kernels. Input and output keep the caller's dtype."""

    def __init__(self, weight: QuantWeight, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.qweight = weight
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.qweight.linear(x, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.qweight.kind}"


@torch.no_grad()
def quantize_linears(module: torch.nn.Module, kind: str, group: int, act_dtype: torch.dtype) -> None:
    """Swap every `nn.Linear` (or QuantLinear) under `module`, the output head included, for a
    QuantLinear of its weight. A module of the caller's own: its other parameters are left as they are."""
    linears = [(name, m) for name, m in module.named_modules() if isinstance(m, (torch.nn.Linear, QuantLinear))]
    for name, m in linears:
        # An already quantized linear (a self-draft of a quant= target) is quantized again from
        # the weights its codes stand for.
        weight = m.qweight.dequantize() if isinstance(m, QuantLinear) else m.weight
        module.set_submodule(name, QuantLinear(quantize(weight, kind, group, act_dtype), m.bias))


def quant_activations(kind: str, device: torch.device) -> torch.dtype:
    """The activation dtype a quantized model runs on the CPU by default: fp32 for tokenleap's
    int8 kernel (fp32 in and out: no conversion around each matmul, ~7% of a step), else bf16,
    what PyTorch's quantized kernels are fast with, natively or not."""
    return torch.float32 if kind == "int8" and device.type == "cpu" and native.available() else torch.bfloat16


def parse_quant(quant: str | None) -> tuple[str, int]:
    """"none" | "int8" | "int4" | "int4-g64" ... -> (kind, group); clear errors otherwise."""
    name = (quant or "none").strip().lower()
    kind, _, group = name.partition("-g")
    if kind not in QUANTS or (group and kind != "int4"):
        raise TokenleapError(f"unknown quantization {quant!r}; use none, int8 or int4 (int4-g32, int4-g64, int4-g128)")
    if kind != "int4":
        return kind, 0
    size = int(group) if group.isdigit() else (32 if not group else -1)
    if size not in INT4_GROUPS:
        raise TokenleapError(f"int4 group size must be one of {', '.join(map(str, INT4_GROUPS))}, got {quant!r}")
    return kind, size


@torch.no_grad()
def quantize(weight: torch.Tensor, kind: str, group: int = 0, act_dtype: torch.dtype = torch.bfloat16) -> QuantWeight:
    """Quantize a [N, K] weight (symmetric int8 per output channel, or asymmetric int4 in groups
    of `group` input columns). Scales are kept in `act_dtype`, as the kernels require."""
    w = weight.detach().float()
    n, k = w.shape
    if kind == "int8":
        scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
        codes = torch.round(w / scale[:, None]).clamp(-128, 127).to(torch.int8)
        if weight.device.type == "cpu" and native.fits((n, k)) and native.available():
            return QuantWeight("int8", native.pack_int8(codes), scale, 0, (n, k), native=True)
        return QuantWeight("int8", codes, scale.to(act_dtype), 0, (n, k))
    if k % group:
        raise TokenleapError(f"int4 group size {group} does not divide a layer's {k} input columns; "
                             f"use one of the sizes that divide it")
    if weight.device.type != "cpu":
        raise TokenleapError("int4 weights run on the CPU kernel only; use int8 or no quantization on this device")
    if n % 16:
        raise TokenleapError(f"int4 needs every matrix's output size to be a multiple of 16 (PyTorch's int4 "
                             f"kernel), and this model has one of {n}; use int8")
    g = w.reshape(n, k // group, group)
    low, high = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = ((high - low) / 15).clamp(min=1e-12)
    codes = torch.round((g - low) / scale).clamp(0, 15).to(torch.int32).reshape(n, k)
    # The kernel computes (q - 8) * scale + zero, so zero = low + 8 * scale.
    scales_zeros = torch.cat([scale, low + 8 * scale], dim=-1).transpose(0, 1).contiguous()  # [K/G, N, 2]
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    return QuantWeight("int4", packed, scales_zeros.to(act_dtype), group, (n, k))


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
    cached = read_json_cache(kernels_file()).get(key)
    if cached and cached.get("layout") in layouts:
        return cached["layout"], {**cached, "cached": True}
    subset = _measure_subset(weights)
    times = {layout: {str(r): round(time_layout(subset, layout, r), 3) for r in MEASURE_ROWS} for layout in layouts}
    best = min(layouts, key=lambda layout: sum(times[layout].values()))
    record = {"layout": best, "measured": True, "ms": times, "matrices": len(subset)}
    write_json_cache(kernels_file(), key, record)
    return best, {**record, "cached": False}


def read_json_cache(path: Path) -> dict:
    """A machine-measurement cache file (kernels.json, costs.json): {} when absent or unreadable."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    return {}


def write_json_cache(path: Path, key: str, record: dict) -> None:
    """Add one record to a cache file, atomically (a crash never leaves half a file); a
    read-only cache home only means measuring again next time."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        records = read_json_cache(path)
        records[key] = record
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
        tmp.replace(path)
