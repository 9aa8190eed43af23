"""Where one greedy decode step's time goes, on the HF forward and on the lean runner.

    python scripts/profile_step.py [--model smollm2-135m] [--dtype bf16] [--threads 2]

Decodes a warm-up, times 3 blocks of --steps single-token steps (median), then profiles
--steps more with torch.profiler and splits each step's wall time into weight matmuls,
attention, other tensor ops (norms, rotary, residuals, copies, sampling) and what no op
accounts for (Python and dispatch between ops). Prints a markdown table; docs/runtime.md
records its output on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import profile

from tokenleap.models.loading import load_model

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise", "aten::_weight_int8pack_mm")
ATTENTION = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
             "aten::_softmax")


def step_profile(model_name: str, dtype: str, runner: str, steps: int) -> dict:
    model = load_model(model_name, dtype=dtype, runner=runner)
    r = model.runner
    cache = r.new_cache(1, 1024)
    token = r.forward(cache, torch.tensor([model.encode("Tell me a story about a cat.")]), last_only=True)[:, -1:]
    token = token.argmax(-1)

    def step() -> None:
        nonlocal token
        token = r.forward(cache, token, last_only=True)[:, -1:].argmax(-1)

    for _ in range(10):
        step()
    blocks = []
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        blocks.append((time.perf_counter() - start) / steps)
    with profile() as prof:
        for _ in range(steps):
            step()
    parts = {"weight matmuls": 0.0, "attention": 0.0, "other tensor ops": 0.0}
    for event in prof.key_averages():
        us = event.self_cpu_time_total / steps
        if event.key in MATMUL:
            parts["weight matmuls"] += us
        elif event.key in ATTENTION:
            parts["attention"] += us
        elif event.key.startswith(("aten::", "mkldnn::")):
            parts["other tensor ops"] += us
    wall_us = statistics.median(blocks) * 1e6
    # The profiler slows ops down a little; scale its op times to the unprofiled wall time
    # only when they exceed it, and call the remainder Python/dispatch.
    total_ops = sum(parts.values())
    scale = min(1.0, wall_us / total_ops) if total_ops else 1.0
    parts = {k: v * scale for k, v in parts.items()}
    parts["Python and dispatch"] = max(0.0, wall_us - sum(parts.values()))
    return {"wall_ms": wall_us / 1e3, "parts_ms": {k: v / 1e3 for k, v in parts.items()},
            "ops_per_step": sum(e.count for e in prof.key_averages()) / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = {kind: step_profile(args.model, args.dtype, kind, args.steps) for kind in ("hf", "lean")}
    parts = list(rows["hf"]["parts_ms"])
    print(f"{args.model}, {args.dtype}, {args.threads} threads, one token per step, ms per step\n")
    print("| runner | step | " + " | ".join(parts) + " | ops/step | tok/s |")
    print("|---" * (len(parts) + 4) + "|")
    for kind, row in rows.items():
        cells = " | ".join(f"{row['parts_ms'][p]:.1f}" for p in parts)
        print(f"| {kind} | {row['wall_ms']:.1f} | {cells} | {row['ops_per_step']:.0f} | {1e3 / row['wall_ms']:.1f} |")


if __name__ == "__main__":
    main()
