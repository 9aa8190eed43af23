"""`tokenleap bench`: argument parsing and the command itself (kept out of cli.py)."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Callable

from ..flags import add_method_option_flags, add_runtime_flags, add_sampling_flags, method_options
from ..decoding.warping import Sampling
from ..models.registry import DEFAULT_MODEL

# The project's Spec-Bench dev prompts, beside the repository (run from its root). Only the
# command lines default to it: the harness itself takes a path.
DEFAULT_PROMPTS = Path("../shared/data/spec_bench_dev.jsonl")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def add_bench_command(sub: argparse._SubParsersAction) -> Callable[[argparse.Namespace], int]:
    """Register the `bench` subcommand; returns its handler."""
    from ..methods import METHODS
    from .anchors import ANCHORS

    p = sub.add_parser("bench", help="benchmark decoding methods on Spec-Bench prompts",
                       description="Benchmark decoding methods on Spec-Bench prompts; writes results.json, "
                                   "report.md and plots to --out. With --compare, compare two result files.")
    p.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS,
                   help="Spec-Bench JSONL (question_id, category, turns) (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="at most N prompts, taken round-robin over categories")
    p.add_argument("--categories", type=_csv, default=None, help="only these categories (comma-separated)")
    p.add_argument("--methods", type=_csv, default=["ar"],
                   help=f"comma-separated, from: {', '.join([*METHODS, *ANCHORS])} (default: ar); "
                        "a variant with its own options is name@key=value+key=value, e.g. "
                        "pass@lookahead=2+embeddings=zero")
    p.add_argument("--model", default=DEFAULT_MODEL, help="target: registry name, HF directory, .gguf or hub id")
    p.add_argument("--draft", default=None, help="draft model for sps, hf-assisted and other draft-based methods; self:int8 / "
                                                    "self:int4 = the target's own weights, quantized")
    p.add_argument("--max-new-tokens", "-n", type=int, default=128)
    add_sampling_flags(p)
    add_runtime_flags(p)
    p.add_argument("--repeats", type=int, default=1, help="passes over the prompts")
    p.add_argument("--warmup", type=int, default=1, help="untimed warm-up generations per method")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--sweep-gamma", type=_int_list, default=None,
                   help="run every gamma-taking method at each draft length, e.g. 1,2,4,6 (as sps@g=2, ...)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: runs/bench-<time>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"),
                   help="compare two results.json files (or run directories) instead of running")
    p.add_argument("--report", type=Path, metavar="RUN",
                   help="instead of running: recompute the summary, report.md and plots of an earlier run "
                        "(directory or results.json) from its per-prompt records, with this version's report")
    option_names = add_method_option_flags(p)
    return lambda args: cmd_bench(args, option_names)


def cmd_bench(args: argparse.Namespace, option_names: list[str]) -> int:
    from .report import compare, load_results

    if args.compare:
        a, b = args.compare
        print(compare(load_results(a), load_results(b), str(a), str(b)))
        return 0
    if args.report:
        return rerender(args.report)
    return run_from_args(args, option_names)


def rerender(run: Path) -> int:
    """Summary, report.md and plots of a finished run, recomputed from its per-prompt records
    (which are never changed)."""
    from .report import load_results

    rewrite_run(load_results(run), run if run.is_dir() else run.parent)
    return 0


def rewrite_run(results: dict, out: Path) -> None:
    """Recompute the summary of `results` and write results.json, report.md and the plots."""
    from .harness import write_outputs
    from .report import save_results, summarize

    results["summary"] = summarize(results)
    save_results(results, out / "results.json")
    write_outputs(results, out)
    print(f"rewrote {out / 'results.json'} (summary), {out / 'report.md'} and the plots")


def run_from_args(args: argparse.Namespace, option_names: list[str]) -> int:
    from .harness import BenchConfig, run_bench
    from .report import markdown_report
    from .variants import plan_methods, unused_options

    options = method_options(args, option_names)
    out = args.out or Path("runs") / datetime.datetime.now().strftime("bench-%Y%m%d-%H%M%S")
    config = BenchConfig(methods=args.methods, prompts=args.prompts, out=out, model=args.model, draft=args.draft,
                         limit=args.limit, categories=args.categories, max_new_tokens=args.max_new_tokens,
                         sampling=Sampling(args.temperature, args.top_k, args.top_p), dtype=args.dtype, device=args.device, quant=args.quant,
                         repeats=args.repeats, seed=args.seed, options=options, sweep_gamma=args.sweep_gamma,
                         threads=args.threads, warmup=args.warmup, progress=not args.no_progress)
    unused = unused_options(plan_methods(config.methods, options, config.sweep_gamma), options)
    if unused:
        print(f"note: no selected method takes --{unused[0].replace('_', '-')}; it is ignored", file=sys.stderr)
    results = run_bench(config)
    report = markdown_report(results)
    # The overall table only: the full report (per category, notes, plots) is in report.md.
    print(report[report.index("## Overall"):report.index("## Per category")].rstrip())
    failed = sum(1 for r in results["per_prompt"] if r["error"])
    print(f"\nresults: {out / 'results.json'}, report: {out / 'report.md'}"
          + (f" ({failed} failed generations)" if failed else ""))
    return 0

