"""`tokenleap train lookahead`: learn PaSS's lookahead embeddings for a frozen model.

Only the L vectors e_1..e_L train; every weight of the model (embeddings and LM head included)
stays frozen. Data: text the target writes itself for prompts outside Spec-Bench — the records
of `tokenleap.train.draft.build_dataset`, or an existing draft run's shards.

One sequence per forward pair, many cut points sharing it:
1. the real tokens x_1..x_N run once without gradients; their K/V go into a cache, and their
   logits give the model's own next-token distributions (the distillation targets);
2. for C cut points t, the blocks [LA_1..LA_L] run together after that cache with a 4D mask:
   LA_i of cut t sees x_1..x_t and LA_1..LA_i of its own block, at the position x_(t+i) would
   have — exactly what a PaSS drafting call on x_1..x_t computes. Real tokens never attend to
   lookahead tokens, so step 1 is shared by every cut point and needs no backward pass.
Loss per (t, i): KL(p(.|x<=t+i) || q_i) (default) or CE(q_i, x_(t+1+i)).
Held-out metric: the greedy accepted drafts per drafting call (leading depths whose argmax
equals the model's), the quantity PaSS's speed depends on.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import TokenleapError
from ..models.hf import HFCache, HFRunner, additive_mask
from ..models.loading import Model
from ..models.lookahead import INITS, check_spec, lookahead_embeddings, save_embeddings
from ..options import Options, option
from .common import load_checkpoint, progress, save_checkpoint, seed_everything
from .draft import DraftTrainConfig, dataset_shards, load_records


@dataclass
class LookaheadTrainConfig(Options):
    out: str = option("runs/lookahead", "run directory (data, checkpoints, history); a rerun resumes it")
    data: str = option("", "shard directory of an earlier run (read only); '' = the target writes <out>/data")
    prompts: int = option(480, "prompts the target answers, when writing our own data")
    max_new_tokens: int = option(192, "tokens the target writes per prompt")
    lookahead: int = option(6, "L, embeddings trained (decoding may use any prefix of them)", minimum=1)
    loss: str = option("kl", "kl: distil the model's own distributions; ce: its tokens", choices=("kl", "ce"))
    init: str = option("mean", "starting embeddings: mean, zero, random or a path to a lookahead .safetensors "
                               "file (continue from those)")
    cuts: int = option(24, "cut points per sequence and step", minimum=1)
    sequences: int = option(1, "sequences per step (gradients accumulate)", minimum=1)
    steps: int = option(300, "optimiser steps", minimum=1)
    lr: float = option(5e-3, "peak learning rate")
    warmup: int = option(10, "learning-rate warm-up steps")
    seed: int = option(0, "seed of prompts, cut points and initialisation")
    eval_every: int = option(50, "steps between held-out evaluations")
    eval_sequences: int = option(16, "held-out sequences per evaluation", minimum=1)
    eval_cuts: int = option(16, "cut points per held-out sequence", minimum=1)
    save_every: int = option(10, "steps between checkpoints", minimum=1)

    def check(self) -> None:
        check_spec(self.init, INITS)


# -- data -------------------------------------------------------------------------------------
def usable(records: list[dict], lookahead: int) -> list[dict]:
    """Sequences with at least one cut point whose L targets all lie inside the sequence."""
    return [r for r in records if len(r["ids"]) - lookahead - 1 >= r["start"] + 1]


def pick_cuts(record: dict, n: int, rng: random.Random, lookahead: int) -> list[int]:
    """Cut points t (real tokens visible) from the last prompt token on, targets all in range."""
    first, last = record["start"] + 1, len(record["ids"]) - lookahead - 1
    choices = range(first, last + 1)
    return sorted(rng.sample(choices, min(n, len(choices))))


# -- the loss ---------------------------------------------------------------------------------
def lookahead_visible(n_real: int, cuts: torch.Tensor, L: int) -> torch.Tensor:
    """Bool [C*L, n_real + C*L]: LA_i of cut t sees x_1..x_t and LA_1..LA_i of its block."""
    rows_t = cuts.repeat_interleave(L)
    group = torch.arange(len(cuts)).repeat_interleave(L)
    depth = torch.arange(L).repeat(len(cuts))
    real = torch.arange(n_real)[None, :] < rows_t[:, None]
    own = (group[:, None] == group[None, :]) & (depth[None, :] <= depth[:, None])
    return torch.cat([real, own], dim=1)


def lookahead_mask(n_real: int, cuts: torch.Tensor, L: int, dtype: torch.dtype) -> torch.Tensor:
    """The additive [1, 1, C*L, n_real + C*L] form of `lookahead_visible`."""
    return additive_mask(lookahead_visible(n_real, cuts, L), dtype)


def cut_loss(model: Model, la: torch.Tensor, record: dict, cuts: list[int], loss_kind: str
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss over the (cut, depth) pairs, greedy agreement [C, L] with the model's argmax)."""
    hf = model.hf_model
    # The HF runner's cache and masks, for any family: every layer keeps every position (a
    # sliding one too) and each layer type gets its own mask, windows applied by position.
    runner = model.runner if isinstance(model.runner, HFRunner) else HFRunner(hf)
    ids = record["ids"].long()[None]
    n_real, L = ids.shape[1], la.shape[0]
    with torch.no_grad():
        cache = HFCache(hf.config)
        ref = hf(input_ids=ids, cache=cache.inner, use_cache=True).logits[0].float()
    t = torch.tensor(cuts)
    depth = torch.arange(1, L + 1)
    positions = (t[:, None] - 1 + depth[None, :]).reshape(1, -1)  # LA_i takes x_(t+i)'s position
    embeds = la.to(hf.dtype).repeat(len(cuts), 1)[None]
    masks = runner.masks(n_real, positions[0], lookahead_visible(n_real, t, L))
    out = hf(inputs_embeds=embeds, attention_mask=masks, position_ids=positions, cache=cache.inner, use_cache=True)
    logq = out.logits[0].float().log_softmax(-1)  # [C*L, V]
    # LA_i of cut t guesses x_(t+1+i) = ids[t+i]; the model's own law for it is row t+i-1.
    target_rows = (t[:, None] + depth[None, :] - 1).reshape(-1)
    logp = ref[target_rows].log_softmax(-1)
    if loss_kind == "kl":
        loss = (logp.exp() * (logp - logq)).sum(-1).mean()
    else:
        loss = -logq.gather(-1, ids[0, target_rows + 1, None]).mean()
    agree = (logq.argmax(-1) == logp.argmax(-1)).view(len(cuts), L)
    return loss, agree


def accepted_per_call(agree: torch.Tensor) -> torch.Tensor:
    """Greedy accepted drafts for each cut: the length of the leading run of agreements."""
    return agree.int().cumprod(-1).sum(-1)


@torch.no_grad()
def evaluate(model: Model, la: torch.Tensor, records: list[dict], cuts: int, seed: int, loss_kind: str) -> dict:
    """Held-out loss, per-depth agreement and mean accepted drafts (same cut points every time)."""
    rng = random.Random(seed)
    losses, agrees = [], []
    for r in records:
        loss, agree = cut_loss(model, la, r, pick_cuts(r, cuts, rng, len(la)), loss_kind)
        losses.append(loss.item())
        agrees.append(agree)
    agree = torch.cat(agrees).float()
    return {"loss": sum(losses) / len(losses), "agree_by_depth": [round(a, 4) for a in agree.mean(0).tolist()],
            "accepted": accepted_per_call(agree).float().mean().item()}


# -- training ---------------------------------------------------------------------------------
def train_lookahead(target: Model, cfg: LookaheadTrainConfig, artifact_dir: str | Path | None = None,
                    command: str | None = None) -> dict:
    """Run (or resume) the training; returns the final metrics. Never changes `target`."""
    cfg.validate()
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    state = load_checkpoint(ckpt_path)
    # A resumed run keeps its data split even if more shards have appeared since.
    paths = [Path(p) for p in state["shards"]] if state else dataset_shards(
        target, cfg.data, DraftTrainConfig(out=cfg.out, prompts=cfg.prompts, max_new_tokens=cfg.max_new_tokens,
                                           seed=cfg.seed))
    held_out, train_paths = paths[-1:], paths[:-1] or paths
    records = usable(load_records(train_paths), cfg.lookahead)
    eval_records = usable(load_records(held_out), cfg.lookahead)[: cfg.eval_sequences]
    if not records or not eval_records:
        raise TokenleapError("no training sequence is long enough for the lookahead asked")
    for p in target.hf_model.parameters():
        p.requires_grad_(False)

    # An untrained kind, or the first L of an earlier run's file (--init continues from it).
    la = torch.nn.Parameter(lookahead_embeddings(target, cfg.init, cfg.lookahead).clone())
    opt = torch.optim.Adam([la], lr=cfg.lr)
    step, history, seconds, runs = 0, [], 0.0, []
    if state:
        la.data.copy_(state["embeddings"])
        opt.load_state_dict(state["optimizer"])
        step, history, seconds, runs = state["step"], state["history"], state.get("seconds", 0.0), state.get("runs", [])
        # Steps after the last checkpoint are redone: the log restarts from the checkpoint's history.
        (out / "history.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
    untrained = state["untrained_eval"] if state else evaluate(target, la.detach(), eval_records, cfg.eval_cuts,
                                                               cfg.seed, cfg.loss)
    rng = random.Random(cfg.seed * 1_000_003 + step)  # a resumed run does not replay old batches
    # Every invocation is recorded: a run resumed with another --steps has another lr schedule.
    runs.append({"command": command or " ".join(sys.argv), "from_step": step, "to_step": cfg.steps,
                 "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    started = time.perf_counter()

    def save() -> None:
        save_checkpoint(ckpt_path, {"embeddings": la.detach().clone(), "optimizer": opt.state_dict(), "step": step,
                                    "history": history, "config": asdict(cfg), "shards": [str(p) for p in paths],
                                    "untrained_eval": untrained, "runs": runs,
                                    "seconds": seconds + time.perf_counter() - started})

    with progress() as bar:
        task = bar.add_task("training lookahead embeddings", total=cfg.steps, completed=step,
                            info=f"held-out accepted {untrained['accepted']:.3f} (untrained)")
        while step < cfg.steps:
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss_sum, agrees = 0.0, []
            for r in rng.sample(records, min(cfg.sequences, len(records))):
                loss, agree = cut_loss(target, la, r, pick_cuts(r, cfg.cuts, rng, cfg.lookahead), cfg.loss)
                (loss / cfg.sequences).backward()
                loss_sum += loss.item() / cfg.sequences
                agrees.append(agree)
            opt.step()
            step += 1
            entry = {"step": step, "loss": loss_sum,
                     "accepted": accepted_per_call(torch.cat(agrees)).float().mean().item()}
            if step % cfg.eval_every == 0 or step == cfg.steps:
                entry["eval"] = evaluate(target, la.detach(), eval_records, cfg.eval_cuts, cfg.seed, cfg.loss)
            history.append(entry)
            bar.update(task, advance=1, info=f"loss {loss_sum:.3f}" + (
                f" | held-out accepted {entry['eval']['accepted']:.3f}" if "eval" in entry else ""))
            with open(out / "history.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
            if step % cfg.save_every == 0 or step == cfg.steps:
                save()
    seconds += time.perf_counter() - started
    final = next((h["eval"] for h in reversed(history) if "eval" in h), None)
    metrics = {"steps": step, "train_seconds": round(seconds, 1), "runs": runs, "sequences": len(records),
               "held_out_sequences": len(eval_records), "shards": [str(p) for p in paths],
               "untrained_eval": untrained, "eval": final, "last": history[-1] if history else None}
    if artifact_dir:
        export_embeddings(la.detach(), cfg, metrics, Path(artifact_dir), target.name, command)
    return metrics


def export_embeddings(la: torch.Tensor, cfg: LookaheadTrainConfig, metrics: dict, artifact_dir: Path,
                      model_name: str, command: str | None = None) -> None:
    """Write what is committed: the embeddings and how they were made."""
    record = {"command": command or " ".join(sys.argv), "model": model_name, "config": asdict(cfg),
              "metrics": metrics, "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    save_embeddings(la, artifact_dir, model_name, record)
