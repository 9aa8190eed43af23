"""`tokenleap ppd-profile`: how often PPD's early exit matches, per exit layer, and what that predicts.

On greedy trajectories of dev prompts (the `ar` output), teacher-forced: for every exit layer d
and k in {1, 3, 5}, p_correct(d, k) = P[greedy token n+1 is in the top-k of EE_d(n)], for the
shared head (the model's own norm + LM head) and the trained heads (where one exists for d).
Speedup predicted by the spec's latency model, 1 / (1 - p (1 - (d+h)/l)), with each head's own
h; and by PPD's own schedule replayed on the realised matches (`simulate_latency`, which is the
same for d >= l/2 and honest about d < l/2, where spawning waits for promotion).
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any, Callable

import torch

from ..flags import add_runtime_flags
from ..models.registry import DEFAULT_MODEL

KS = (1, 3, 5)


def add_ppd_profile_command(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    from .command import DEFAULT_PROMPTS

    p = sub.add_parser("ppd-profile", help="PPD early-exit match rates per layer (shared vs trained head) "
                                           "and the speedup they predict; markdown table + plot")
    p.add_argument("--model", default=DEFAULT_MODEL, help="registry name, HF directory, .gguf or hub id")
    add_runtime_flags(p)
    p.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="Spec-Bench JSONL (dev half)")
    p.add_argument("--limit", type=int, default=5, help="prompts, taken round-robin over categories")
    p.add_argument("--max-new-tokens", "-n", type=int, default=64)
    p.add_argument("--heads", default="auto", help="trained heads: auto (committed for the model), none, or a path")
    p.add_argument("--candidates", type=int, default=3, help="k of the speedup columns")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: runs/ppd-profile-<time>)")
    return cmd_ppd_profile


def cmd_ppd_profile(args: argparse.Namespace) -> int:
    from ..generation import get_model
    from ..models.early_exit import artifact_for
    from .prompts import load_prompts

    if args.threads:
        torch.set_num_threads(args.threads)
    model = get_model(args.model, args.dtype, args.device, args.quant)
    heads = None if args.heads == "none" else artifact_for(model.name) if args.heads == "auto" else Path(args.heads)
    prompts = [p.text for p in load_prompts(args.prompts, args.limit)]
    result = profile(model, prompts, args.max_new_tokens, heads, args.candidates)
    out = args.out or Path("runs") / datetime.datetime.now().strftime("ppd-profile-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(result)
    (out / "ppd_profile.md").write_text(table + "\n")
    (out / "ppd_profile.json").write_text(json.dumps(result, indent=2))
    plot(result, out / "ppd_profile.png")
    print(table)
    print(f"\nwritten: {out / 'ppd_profile.md'}, {out / 'ppd_profile.json'}, {out / 'ppd_profile.png'}")
    return 0


@torch.no_grad()
def profile(model, prompts: list[str], max_new_tokens: int, heads_path: Path | None, k: int = 3) -> dict[str, Any]:
    """Match rates per (head, d, k) on greedy trajectories, with predicted speedups at `k`."""
    from ..generation import generate
    from ..methods.ppd_latency import predicted_speedup, simulate_latency
    from ..models.early_exit import exit_head, exit_states, layer_size
    from ..models.early_exit import load_heads

    runner = model.runner
    layers = runner.num_layers
    shared = exit_head(model, "shared", 1)
    trained = load_heads(heads_path, model)[0] if heads_path else {}
    costs = {"shared": {d: shared.cost for d in range(1, layers)},
             "trained": {d: h.cost_params() / layer_size(runner) for d, h in trained.items()}}
    topks = {"shared": {d: shared.topk for d in range(1, layers)},
             "trained": {d: h.topk for d, h in trained.items()}}
    ks = sorted(set(KS) | {k})
    # hits[kind][d][k]: per sequence, the match indicator of each generated token
    hits = {kind: {d: {j: [] for j in ks} for d in topks[kind]} for kind in topks}
    tokens = 0
    for text in prompts:
        ids = model.encode(text)
        gen = generate(ids, method="ar", model=model, max_new_tokens=max_new_tokens).token_ids
        tokens += len(gen)
        states = exit_states(model, ids + gen[:-1], list(range(1, layers)))
        truth = torch.tensor(gen)[:, None]
        for kind, per_layer in topks.items():
            for d, topk in per_layer.items():
                top = topk(states[d][len(ids) - 1:], max(ks))
                for j in ks:
                    hits[kind][d][j].append((top[:, :j] == truth).any(-1).tolist())
    rows = []
    for d in range(1, layers):
        row: dict[str, Any] = {"d": d}
        for kind in topks:
            if d not in hits[kind]:
                row[kind] = None
                continue
            h = costs[kind][d]
            p = {j: sum(map(sum, hits[kind][d][j])) / tokens for j in ks}
            sim = sum(sum(simulate_latency(layers, d, h, seq, len(seq))) for seq in hits[kind][d][k])
            row[kind] = {**{f"p@{j}": p[j] for j in KS}, "h": h, f"speedup_model@{k}": predicted_speedup(p[k], d, h, layers),
                         f"speedup_sim@{k}": layers * tokens / sim}
        rows.append(row)
    return {"model": model.name, "layers": layers, "prompts": len(prompts), "tokens": tokens,
            "max_new_tokens": max_new_tokens, "k": k, "trained_heads": str(heads_path) if heads_path else None,
            "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    k = result["k"]
    kinds = ["shared"] + (["trained"] if result["trained_heads"] else [])
    head = ["d"]
    for kind in kinds:
        head += [f"{kind} p@{j}" for j in KS] + [f"{kind} speedup@{k} model", f"{kind} speedup@{k} sched"]
    lines = [f"PPD early exit on {result['model']} ({result['layers']} layers): {result['tokens']} greedy tokens "
             f"of {result['prompts']} dev prompts. p@k = P[greedy token in the head's top-k at layer d]. "
             f"speedup model = 1/(1 - p(1 - (d+h)/l)) at k={k}; sched = PPD's schedule replayed on the realised "
             f"matches (equal for d >= l/2). h: "
             + ", ".join(f"{kind} {_h(result, kind)}" for kind in kinds) + " layer-units.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cells = [str(row["d"])]
        for kind in kinds:
            r = row[kind]
            cells += ["–"] * 5 if r is None else [f"{r[f'p@{j}']:.3f}" for j in KS] + [
                f"{r[f'speedup_model@{k}']:.2f}", f"{r[f'speedup_sim@{k}']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _h(result: dict[str, Any], kind: str) -> str:
    values = sorted({round(r[kind]["h"], 2) for r in result["rows"] if r[kind]})
    return "/".join(map(str, values)) if kind == "trained" else str(values[0])


def plot(result: dict[str, Any], path: Path) -> Path:
    from .plots import _pyplot

    plt = _pyplot()
    k = result["k"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {1: "tab:blue", 3: "tab:orange", 5: "tab:green"}
    for kind, style in (("shared", "--"), ("trained", "-")):
        rows = [r for r in result["rows"] if r[kind]]
        if not rows:
            continue
        ds = [r["d"] for r in rows]
        for j in KS:
            left.plot(ds, [r[kind][f"p@{j}"] for r in rows], style, marker="o", ms=3, color=colors[j],
                      label=f"{kind} k={j}")
        right.plot(ds, [r[kind][f"speedup_model@{k}"] for r in rows], style, marker="o", ms=3, color="tab:purple",
                   label=f"{kind}: latency model")
        right.plot(ds, [r[kind][f"speedup_sim@{k}"] for r in rows], style, marker="x", ms=4, color="tab:gray",
                   label=f"{kind}: PPD schedule")
    left.set(xlabel="exit layer d", ylabel="p_correct(d, k)", ylim=(0, 1), title="early-exit match rate")
    right.axhline(1.0, color="black", lw=0.8)
    right.axvline(result["layers"] / 2, color="black", lw=0.5, ls=":")
    right.set(xlabel="exit layer d", ylabel=f"predicted speedup (k={k})", title="predicted speedup")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.suptitle(f"PPD on {result['model']}: {result['tokens']} greedy tokens, {result['prompts']} prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
