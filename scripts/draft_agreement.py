"""How well a draft predicts the target's greedy text, per Spec-Bench category.

The target answers the dev prompts greedily once (cached); the draft then reads each answer
teacher-forced. Because greedy speculative decoding accepts exactly the draft tokens that equal
the target's, the run lengths of top-1 agreement give the mean accepted length (MAL) `sps`
would reach with γ drafts, without timing anything:

    python scripts/draft_agreement.py --draft smollm2-135m-draft --gamma 4 --per-category 8
"""

from __future__ import annotations

import argparse
import hashlib
import collections
import json
from pathlib import Path

import torch

from tokenleap.models.loading import load_model
from tokenleap.models.registry import cache_home
from tokenleap.train.draft import generate_batch


def dev_prompts(path: str, per_category: int) -> list[tuple[str, str]]:
    seen: collections.Counter = collections.Counter()
    out = []
    for line in Path(path).read_text().splitlines():
        row = json.loads(line)
        if seen[row["category"]] < per_category:
            seen[row["category"]] += 1
            out.append((row["category"], row["turns"][0]))
    return out


def target_answers(prompts, max_new_tokens: int) -> list[dict]:
    """Greedy target answers (fp32 HF generate, batched), cached by prompt set and length."""
    key = hashlib.sha256("\n".join(p for _, p in prompts).encode()).hexdigest()[:12]
    cache = cache_home() / f"dev-answers-{key}-{max_new_tokens}.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=False)
    target = load_model("smollm2-135m", dtype="fp32")
    records = []
    for i in range(0, len(prompts), 16):
        records += generate_batch(target, [p for _, p in prompts[i:i + 16]], max_new_tokens, 1)
    torch.save(records, cache)
    return records


def mal(agree: list[bool], gamma: int) -> float:
    """Greedy sps mean accepted length: each target forward accepts the leading run of
    agreements (at most γ) plus the target's own token."""
    pos = steps = 0
    while pos < len(agree):
        run = 0
        while run < gamma and pos + run < len(agree) and agree[pos + run]:
            run += 1
        pos += run + 1
        steps += 1
    return len(agree) / max(steps, 1)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draft", default="smollm2-135m-draft")
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/spec_bench_dev.jsonl"))
    ap.add_argument("--per-category", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--gamma", type=int, default=4)
    ap.add_argument("--early-exit", action="store_true",
                    help="also score the target's own first d layers + its trained PPD exit head, "
                         "for every committed d: a yardstick for what a draft of that cost could reach")
    args = ap.parse_args()
    prompts = dev_prompts(args.data, args.per_category)
    records = target_answers(prompts, args.max_new_tokens)
    # The draft's own runner, as `sps` runs it: its reduced head never predicts other tokens.
    runner = load_model(args.draft, dtype="fp32").runner
    report(agreement(prompts, records, lambda ids: runner.forward(runner.new_cache(1, len(ids)), ids[None])[0]
                     .argmax(-1)), args.gamma)
    if args.early_exit:
        early_exit_yardstick(prompts, records, args.gamma)


def agreement(prompts, records, predict) -> dict[str, list]:
    """Per category, per answer: does predict(ids) (one guess per position: [len(ids)] ids)
    equal the target's next token at every answer position?"""
    per_cat: dict[str, list] = collections.defaultdict(list)
    for (cat, _), r in zip(prompts, records):
        ids = r["ids"].long()
        per_cat[cat].append((predict(ids)[r["start"]:-1] == ids[r["start"] + 1:]).tolist())
    return per_cat


def report(per_cat: dict[str, list], gamma: int) -> None:
    print(f"{'category':16} {'agree':>6} {'MAL':>5}")
    rows = []
    for cat, seqs in per_cat.items():
        flat = [a for s in seqs for a in s]
        m = sum(mal(s, gamma) * len(s) for s in seqs) / max(len(flat), 1)
        rows.append((cat, sum(flat) / len(flat), m, len(flat)))
        print(f"{cat:16} {rows[-1][1]:6.3f} {m:5.2f}")
    n = sum(r[3] for r in rows)
    print(f"{'all (tokens)':16} {sum(r[1] * r[3] for r in rows) / n:6.3f} {sum(r[2] * r[3] for r in rows) / n:5.2f}")


@torch.no_grad()
def early_exit_yardstick(prompts, records, gamma: int) -> None:
    """The same figures for 'draft = the target's first d layers + the committed trained exit
    head' (the PPD heads): costlier than any useful draft, so an upper reference for one."""
    from tokenleap.models.early_exit import artifact_for, load_heads

    target = load_model("smollm2-135m", dtype="fp32")
    heads, _ = load_heads(artifact_for("smollm2-135m"), target)
    runner = target.runner
    for d, head in sorted(heads.items()):
        def predict(ids: torch.Tensor, d: int = d, head=head) -> torch.Tensor:
            h = runner.hidden_states(runner.new_cache(1, len(ids)), runner.embed(ids[None]), layers=range(d))
            return head.topk(h[0], 1)[:, 0]

        print(f"\n-- target layers 1..{d} of {runner.num_layers} + trained exit head")
        report(agreement(prompts, records, predict), gamma)


if __name__ == "__main__":
    main()
