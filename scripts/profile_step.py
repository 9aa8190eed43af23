"""Where one decode step's time goes, on the HF forward and on the lean runner's weight layouts.

    python scripts/profile_step.py [--model smollm2-135m] [--dtype auto] [--threads 2] [--rows 1,8]

For each runner (HF; lean with each weight layout that runs here) and each row count (1: a
plain decoding step; 8: a verification forward), decodes a warm-up, times 3 blocks of --steps
steps (median), then profiles
--steps more with torch.profiler, which splits the time spent inside tensor ops into weight
matmuls, attention and everything else (norms, rotary, residuals, cache writes, views,
sampling); each of those small ops costs microseconds of dispatch whatever its size, so
ops/step is the overhead to watch. Prints a markdown table; docs/runtime.md records its
output on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import profile

from tokenleap.models.hardware import cpu_caps, dtype_name, resolve_dtype
from tokenleap.models.kernels import available_layouts
from tokenleap.models.loading import load_model

MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "mkldnn::_linear_pointwise", "aten::_weight_int8pack_mm")
ATTENTION = ("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_attention_math",
             "aten::_softmax")


def step_profile(model_name: str, dtype: str, runner: str, layout: str, rows: int, steps: int) -> dict:
    model = load_model(model_name, dtype=dtype, runner=runner, kernels_layout=layout)
    r = model.runner
    cache = r.new_cache(1, 1024)
    token = r.forward(cache, torch.tensor([model.encode("Tell me a story about a cat.")]), last_only=True)[:, -1:]
    token = token.argmax(-1)

    def step() -> None:
        # `rows` new positions (the token and rows-1 guesses repeating it), of which one is kept.
        nonlocal token
        kept = cache.length + 1
        token = r.forward(cache, token.repeat(1, rows))[:, :1].argmax(-1)
        cache.rollback(kept)

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
    total = sum(parts.values())
    return {"wall_ms": statistics.median(blocks) * 1e3,
            "share": {k: v / total for k, v in parts.items()},
            "ops_per_step": sum(e.count for e in prof.key_averages()) / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--rows", default="1,8", help="new positions per forward, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    runs = [("hf", "auto")] + [("lean", layout) for layout in available_layouts(dtype, torch.device("cpu"))]
    table = {(kind, layout, rows): step_profile(args.model, args.dtype, kind, layout, rows, args.steps)
             for kind, layout in runs for rows in map(int, args.rows.split(","))}
    parts = list(next(iter(table.values()))["share"])
    caps = cpu_caps()
    print(f"{args.model}, {dtype_name(dtype)}, {args.threads} threads, CPU {caps.model} ({caps.isa}, native bf16: "
          f"{caps.native_bf16}{', forced off' if caps.forced_fallback else ''})\n")
    print("| runner | rows | ms/step | " + " | ".join(f"{p} (% of op time)" for p in parts) + " | ops/step |")
    print("|---" * (len(parts) + 4) + "|")
    for (kind, layout, rows), row in table.items():
        cells = " | ".join(f"{100 * row['share'][p]:.0f}" for p in parts)
        name = "HF forward" if kind == "hf" else f"lean, {layout}"
        print(f"| {name} | {rows} | {row['wall_ms']:.1f} | {cells} | {row['ops_per_step']:.0f} |")


if __name__ == "__main__":
    main()
