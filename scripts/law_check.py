"""Add the law check to a sampling `tokenleap bench` run made before the bench recorded it.

For every record without PIT values, score its tokens under the run's target and warping
(`law_pit`, uniforms seeded as the bench seeds them), store them in the record, then rewrite the
summary, report.md and plots (`tokenleap bench --report`). Generated tokens are not touched.

    python scripts/law_check.py docs/bench/sampling-mtad-dev240
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tokenleap import Sampling
from tokenleap.bench.command import rewrite_run
from tokenleap.bench.harness import encode_prompts, load_prompts, pit_generator, pit_record
from tokenleap.bench.report import load_results
from tokenleap.decoding.quality import law_pit
from tokenleap.models.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, help="run directory (or its results.json)")
    args = ap.parse_args()
    results = load_results(args.run)
    cfg = results["config"]
    if cfg.get("greedy", True):
        raise SystemExit("the law check is for sampling runs")
    torch.set_num_threads(cfg["threads"] or torch.get_num_threads())
    target = load_model(cfg["model"], dtype=cfg["dtype"])
    prompt_ids = encode_prompts(target, load_prompts(cfg["prompts_file"], cfg["limit"], cfg["categories"]))
    sampling = Sampling(**cfg["sampling"])
    todo = [r for r in results["per_prompt"] if r["error"] is None and r["token_ids"] and "pit" not in r]
    for r in todo:
        pit = law_pit(target, prompt_ids[r["prompt_index"]], r["token_ids"], sampling, pit_generator(r["seed"]))
        r["pit"] = pit_record(pit.tolist())
    print(f"scored {len(todo)} records")
    rewrite_run(results, args.run if args.run.is_dir() else args.run.parent)


if __name__ == "__main__":
    main()
