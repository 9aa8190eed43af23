"""`tokenleap env`: what this machine is and how tokenleap runs on it — the text a user pastes
into a bug report, and the cost curve methods' settings can be chosen from."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from typing import Any

import torch

from .models.hardware import auto_dtype, cpu_caps, dtype_name, resolve_device


def versions() -> dict[str, str]:
    import transformers

    from . import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenleap": __version__}


def environment(model: str | None, dtype: str = "auto", device: str = "auto", rows: tuple[int, ...] = (1, 2, 4, 8, 16),
                context: int = 256, quant: str = "none") -> dict[str, Any]:
    """Versions, device, CPU capabilities and the choices `auto` makes; with a model, its kernel
    layout and the measured cost of one decoding forward for each row count."""
    torch_device = resolve_device(device)
    info: dict[str, Any] = {"versions": versions(), "platform": platform.platform(), "device": str(torch_device),
                            "cpu": cpu_caps().to_dict(), "threads": torch.get_num_threads(),
                            "auto_dtype": dtype_name(auto_dtype(torch_device))}
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
    return info


def render(info: dict[str, Any]) -> str:
    cpu = info["cpu"]
    features = [name for name in ("avx2", "avx512", "avx512_bf16", "amx", "onednn", "onednn_bf16") if cpu[name]]
    lines = [" ".join(f"{k} {v}" for k, v in info["versions"].items()),
             f"platform: {info['platform']}",
             f"device: {info['device']}; threads: {info['threads']}",
             f"cpu: {cpu['model']}; isa {cpu['isa']}; {' '.join(features) or 'no vector extensions'}"
             f"; native bf16: {'yes' if cpu['native_bf16'] else 'no'}"
             + (" (forced off by TOKENLEAP_NO_NATIVE_BF16)" if cpu["forced_fallback"] else ""),
             f"auto dtype: {info['auto_dtype']}"]
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
    info = environment(model, args.dtype, args.device, context=args.context, quant=args.quant)
    print(json.dumps(info, indent=2) if args.json else render(info))
    sys.stdout.flush()
    return 0
