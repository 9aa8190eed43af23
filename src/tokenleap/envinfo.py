"""`tokenleap env`: what this machine is and how tokenleap runs on it — the text a user pastes
into a bug report, and the cost curve methods' settings can be chosen from."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Any

import torch

from .models import native
from .models.hardware import auto_dtype, cpu_caps, dtype_name, resolve_device


def versions() -> dict[str, str]:
    import transformers

    from . import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenleap": __version__}


ALPHAS = (0.3, 0.5, 0.7, 0.9)


def parse_curve(text: str) -> dict[int, float]:
    """`1=35,8=44` -> {1: 35.0, 8: 44.0}: a step-cost curve (rows -> ms) to ask the cost model about."""
    from .errors import TokenleapError

    curve = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        rows, _, ms = part.partition("=")
        try:
            curve[int(rows)] = float(ms)
        except ValueError:
            raise TokenleapError(f"--what-if: {part!r} is not ROWS=MS (e.g. 1=35,8=44)") from None
        if curve[int(rows)] <= 0 or int(rows) < 1:
            raise TokenleapError(f"--what-if: {part!r}: rows must be >= 1 and milliseconds > 0")
    if 1 not in curve or len(curve) < 2:
        raise TokenleapError("--what-if needs the one-row cost and at least one more point, e.g. 1=35,8=44")
    return curve


def auto_choices(target: Any, draft: Any, curve: dict[int, float] | None = None) -> dict[str, Any]:
    """What each method's auto setting settles on at a few acceptance rates, and its expected
    speedup over plain steps, on this machine's measured costs or on another target curve
    `curve` (the draft's and the one-thread costs scaled with its one-row cost)."""
    from .decoding.adaptive import best_length
    from .methods import mtad, ppd
    from .methods.ppd_latency import break_even_match_rate
    from .models.cost import CostModel, measured_batch_curve, measured_curve, one_thread_ms
    from .models.early_exit import exit_head

    here = measured_curve(target)
    scale = curve[1] / here[1] if curve else 1.0
    curve = curve or here
    out: dict[str, Any] = {"curve": {str(r): round(ms, 2) for r, ms in sorted(curve.items())}}
    if draft is not None:
        drafts = {r: ms * scale for r, ms in measured_curve(draft).items()}
        beams = {b: ms * scale for b, ms in measured_batch_curve(draft).items()}
        cost = CostModel(curve, drafts[1], drafts, beams)  # as the methods see it (mtad: its beams' batch curve)
        out.update(draft=draft.name, draft_ratio=round(drafts[1] / curve[1], 3))
        width = mtad.MTADOptions.beam_width
        for name, kw in (("sps", {}), ("mtad", dict(least=2, width=width)),
                         ("mtad-tree", dict(least=2, width=width, tree=True))):
            out[name] = [dict(zip(("alpha", "gamma", "speedup"), (a, *best_length(cost, a, **kw)))) for a in ALPHAS]
    head = exit_head(target, "auto", 0)
    opts = ppd.PPDOptions()
    c1 = one_thread_ms(target, opts.candidates) * scale
    layers = target.runner.num_layers
    out["ppd"] = {"exit_layer": head.layer, "head_cost": round(head.cost, 2), "one_thread_ratio": round(c1 / curve[1], 3),
                  "break_even_match_rate": break_even_match_rate(c1, curve[1], head.layer, head.cost, layers)}
    return out


def environment(model: str | None, dtype: str = "auto", device: str = "auto", rows: tuple[int, ...] = (1, 2, 4, 8, 16),
                context: int = 256, quant: str = "none", what_if: dict[int, float] | None = None,
                draft: str | None = None) -> dict[str, Any]:
    """Versions, device, CPU capabilities and the choices `auto` makes; with a model, its kernel
    layout, the measured cost of one decoding forward for each row count, and what the methods'
    auto settings choose on it (and, with `what_if`, on that curve instead)."""
    torch_device = resolve_device(device)
    info: dict[str, Any] = {"versions": versions(), "platform": platform.platform(), "device": str(torch_device),
                            "cpu": cpu_caps().to_dict(), "threads": torch.get_num_threads(),
                            "auto_dtype": dtype_name(auto_dtype(torch_device)), "int8_kernel": native.status()}
    if torch_device.type == "cuda":
        info["cuda"] = {"name": torch.cuda.get_device_name(torch_device), "cuda": torch.version.cuda,
                        "bf16": torch.cuda.is_bf16_supported()}
    if model is None:
        return info
    from .generation import get_model
    from .models.cost import forward_curve

    loaded = get_model(model, dtype, device, quant)
    info.update(model=model, dtype=dtype_name(loaded.dtype), runner=type(loaded.runner).__name__,
                kernels=loaded.runtime()["kernels"], kernel_choice=loaded.kernels, context=context)
    info["forward_ms"] = forward_curve(loaded, rows, context)
    one = info["forward_ms"][str(rows[0])]
    info["forward_ratio"] = {r: round(ms / one, 3) for r, ms in info["forward_ms"].items()}
    from .planner import load_draft

    draft_model = load_draft(loaded, draft, dtype=dtype, device=device)
    info["auto_choices"] = {"here": auto_choices(loaded, draft_model)}
    if what_if:
        info["auto_choices"]["what_if"] = auto_choices(loaded, draft_model, what_if)
    return info


def _render_choices(name: str, c: dict[str, Any]) -> list[str]:
    curve = ", ".join(f"{r} row{'s' if r != '1' else ''} {ms:g} ms" for r, ms in c["curve"].items())
    lines = [f"auto choices, {name} (step cost: {curve}):"]
    if "draft" in c:
        lines.append(f"  draft {c['draft']}: a step costs {c['draft_ratio']:.2f}x a target step")
        lines.append("  acceptance  " + "  ".join(f"{m:>16}" for m in ("sps", "mtad", "mtad-tree")))
        for i, alpha in enumerate(ALPHAS):
            cells = []
            for m in ("sps", "mtad", "mtad-tree"):
                row = c[m][i]
                cells.append(f"{'plain' if not row['gamma'] else 'gamma=' + str(row['gamma']):>9} {row['speedup']:.2f}x")
            lines.append(f"  {alpha:>10}  " + "  ".join(f"{cell:>16}" for cell in cells))
    p = c["ppd"]
    even = p["break_even_match_rate"]
    lines.append(f"  ppd (d={p['exit_layer']}, h={p['head_cost']}, one-thread step {p['one_thread_ratio']:.2f}x): "
                 + (f"the branch pays above match rate {even:.2f}" if even is not None else "the branch never pays"))
    return lines


def render(info: dict[str, Any]) -> str:
    cpu = info["cpu"]
    features = [name for name in ("avx2", "avx512", "avx512_bf16", "amx", "onednn", "onednn_bf16") if cpu[name]]
    lines = [" ".join(f"{k} {v}" for k, v in info["versions"].items()),
             f"platform: {info['platform']}",
             f"device: {info['device']}; threads: {info['threads']}",
             f"cpu: {cpu['model']}; isa {cpu['isa']}; {' '.join(features) or 'no vector extensions'}"
             f"; native bf16: {'yes' if cpu['native_bf16'] else 'no'}"
             + (" (forced off by TOKENLEAP_NO_NATIVE_BF16)" if cpu["forced_fallback"] else ""),
             f"auto dtype: {info['auto_dtype']}", f"int8 kernel: {info['int8_kernel']}"]
    if "cuda" in info:
        lines.append(f"cuda: {info['cuda']['name']} (CUDA {info['cuda']['cuda']}, bf16 {info['cuda']['bf16']})")
    if "model" in info:
        choice = info["kernel_choice"]
        how = ("measured now" if choice.get("measured") and not choice.get("cached") else
               "measured earlier, cached" if choice.get("cached") else choice.get("reason", ""))
        lines.append(f"model: {info['model']} ({info['runner']}), dtype {info['dtype']}, kernels {info['kernels']}"
                     + (f" ({how})" if how else ""))
        for layout, ms in choice.get("ms", {}).items():
            lines.append(f"  {layout}: " + ", ".join(f"{r} row{'s' if r != '1' else ''} {t:.1f} ms" for r, t in ms.items())
                         + " (the model's matmuls alone)")
        lines.append(f"decoding forward after {info['context']} cached tokens:")
        for r, ms in info["forward_ms"].items():
            lines.append(f"  {r:>3} rows  {ms:7.2f} ms  {info['forward_ratio'][r]:.2f}x one row")
        for name, choices in info.get("auto_choices", {}).items():
            lines += _render_choices("this machine" if name == "here" else "what if", choices)
    return "\n".join(lines)


def add_env_command(sub: argparse._SubParsersAction):
    from .flags import add_runtime_flags
    from .models.registry import DEFAULT_MODEL

    p = sub.add_parser("env", help="print versions, CPU/device capabilities, auto choices and the forward cost curve",
                       description="What this machine is and how tokenleap runs on it: paste it into bug reports.")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="model whose kernels and forward cost to measure (default: %(default)s; 'none' skips)")
    add_runtime_flags(p)
    p.add_argument("--context", type=int, default=256, help="cached tokens before the timed forwards")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--draft", default=None,
                   help="draft whose costs the auto choices use (default: the model's registry draft; self:int8 ...)")
    p.add_argument("--what-if", default=None, metavar="ROWS=MS,...",
                   help="also show what the auto settings would choose on this target step-cost curve, e.g. "
                        "1=35,8=44 (the draft's and one-thread costs scaled with it)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    return cmd_env


def cmd_env(args: argparse.Namespace) -> int:
    from .errors import TokenleapError

    if args.threads is not None:
        if args.threads < 1:
            raise TokenleapError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.context < 1:
        raise TokenleapError(f"--context must be >= 1, got {args.context}")
    model = None if args.model.lower() == "none" else args.model
    what_if = parse_curve(args.what_if) if args.what_if else None
    info = environment(model, args.dtype, args.device, context=args.context, quant=args.quant, what_if=what_if,
                       draft=args.draft)
    print(json.dumps(info, indent=2) if args.json else render(info))
    sys.stdout.flush()
    return 0
