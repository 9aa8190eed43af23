"""`tokenleap train early-exit`: distil PPD's early-exit heads (models/early_exit.py) from a frozen target.

1. data: target-written text with the target's top-k log-probs at every generated position,
   exactly the records of `tokenleap train draft` (`--data` reuses a draft run's shards; else
   they are written here with the same code). The last shard is held out.
2. features: the frozen target's hidden state after d layers, for every exit layer d being
   trained, at the positions that predict a generated token (computed once, cached per shard),
   from the lean runner's layers or, for any other family, the HF runner's per-layer access.
3. heads: one tuned-lens translator + reduced-vocabulary head per exit layer, trained jointly
   with the cross-entropy against the target's renormalised top-k (what the final layers would
   say), like the draft trainer's loss. Only the heads train; the target is never touched.
4. export: heads (bf16) + vocabulary + the default exit layer: the one whose held-out match
   rate gives the best speedup under PPD's latency model (methods/ppd_latency.py, simulate_latency).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import TokenleapError
from ..methods.ppd_latency import simulate_latency
from ..models.early_exit import ExitHead, exit_states, layer_size, new_heads, save_heads
from ..models.loading import Model
from ..options import Options, option
from .common import load_checkpoint, progress, save_checkpoint, seed_everything
from .draft import DraftTrainConfig, dataset_shards, load_records, vocabulary_subset


@dataclass
class EarlyExitTrainConfig(Options):
    out: str = option("runs/early-exit", "run directory (data, features, checkpoints); a rerun resumes it")
    data: str = option("", "directory of `train draft` data shards to reuse; '' = write shards under --out")
    prompts: int = option(480, "prompts the target answers, when writing data")
    max_new_tokens: int = option(192, "tokens the target writes per prompt")
    top_k: int = option(32, "target log-probs kept per position")
    layers: str = option("12,15,18,21,24", "comma-separated exit layers to train a head for (those at or "
                                           "beyond the model's depth are dropped)")
    vocab: int = option(4096, "size of the reduced candidate vocabulary")
    max_tokens: int = option(60000, "training positions (their features are held in memory)")
    steps: int = option(1000, "optimiser steps")
    tokens_per_step: int = option(1024, "training positions per step")
    lr: float = option(2e-3, "peak learning rate")
    warmup: int = option(30, "learning-rate warm-up steps")
    seed: int = option(0, "seed of prompts, shuffling and initialisation")
    eval_every: int = option(100, "steps between held-out evaluations")
    save_every: int = option(50, "steps between checkpoints")
    candidates: int = option(3, "k used to choose the default exit layer")
    max_minutes: float = option(0.0, "stop (checkpointed; run again to resume) after this many minutes; "
                                     "0 = no limit")


# -- 1./2. data and features ---------------------------------------------------------------
def shard_features(target: Model, path: Path, layers: list[int], cache_dir: Path) -> dict:
    """Exit-layer features and targets of one data shard (computed once, then read back)."""
    cached = cache_dir / f"{path.stem}-L{'-'.join(map(str, layers))}.pt"
    if cached.is_file():
        return torch.load(cached, weights_only=False)
    feats: dict[int, list[torch.Tensor]] = {d: [] for d in layers}
    topk_ids, topk_logp, lengths = [], [], []
    for r in load_records([path]):
        n = len(r["topk_ids"])
        states = exit_states(target, r["ids"].tolist(), layers)
        for d in layers:
            feats[d].append(states[d][r["start"]: r["start"] + n].to(torch.bfloat16))
        topk_ids.append(r["topk_ids"])
        topk_logp.append(r["topk_logp"])
        lengths.append(n)
    data = {"feats": {d: torch.cat(v) for d, v in feats.items()}, "topk_ids": torch.cat(topk_ids),
            "topk_logp": torch.cat(topk_logp), "lengths": lengths}
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(cached, data)
    return data


def merge(parts: list[dict], max_tokens: int | None = None) -> dict:
    """Concatenate shard features, keeping whole sequences, up to max_tokens positions."""
    kept, total = [], 0
    for p in parts:
        if max_tokens and total >= max_tokens:
            break
        kept.append(p)
        total += len(p["topk_ids"])
    return {"feats": {d: torch.cat([p["feats"][d] for p in kept]) for d in kept[0]["feats"]},
            "topk_ids": torch.cat([p["topk_ids"] for p in kept]), "topk_logp": torch.cat([p["topk_logp"] for p in kept]),
            "lengths": [n for p in kept for n in p["lengths"]]}


def soft_targets(data: dict, remap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's top-k as (local ids, probabilities renormalised over the reduced vocabulary)."""
    local = remap[data["topk_ids"].long()]
    p = data["topk_logp"].float().exp() * (local >= 0)
    return local.clamp_min(0), p / p.sum(-1, keepdim=True).clamp_min(1e-9)


# -- 3. training --------------------------------------------------------------------------
def heads_loss(heads: dict[int, ExitHead], feats: dict[int, torch.Tensor], tgt_ids: torch.Tensor,
               tgt_p: torch.Tensor) -> torch.Tensor:
    """Sum over exit layers of the mean cross-entropy against the target's top-k."""
    loss = 0.0
    for d, head in heads.items():
        logq = head(feats[d].float()).float().log_softmax(-1)
        loss = loss + -(tgt_p * logq.gather(-1, tgt_ids)).sum(-1).mean()
    return loss


@torch.no_grad()
def evaluate(heads: dict[int, ExitHead], data: dict, remap: torch.Tensor, num_layers: int, costs: dict[int, float],
             k: int) -> dict[int, dict]:
    """Held-out loss, match rates p@1/3/5 (final argmax among the head's top-k), and the
    speedup PPD's schedule would get from these matches (k = `k`), per exit layer."""
    tgt_ids, tgt_p = soft_targets(data, remap)
    final = data["topk_ids"][:, 0].long()
    out = {}
    for d, head in heads.items():
        losses, hits = [], {1: [], 3: [], 5: [], k: []}
        for i in range(0, len(final), 2048):
            logits = head(data["feats"][d][i:i + 2048].float()).float()
            losses.append(-(tgt_p[i:i + 2048] * logits.log_softmax(-1).gather(-1, tgt_ids[i:i + 2048])).sum(-1))
            top = head.vocab_ids[logits.topk(max(hits), dim=-1).indices]
            for j in hits:
                hits[j].append((top[:, :j] == final[i:i + 2048, None]).any(-1))
        match = {j: torch.cat(v) for j, v in hits.items()}
        sim = ar = 0.0
        for seq in torch.split(match[k], data["lengths"]):
            sim += sum(simulate_latency(num_layers, d, costs[d], seq.tolist(), len(seq)))
            ar += num_layers * len(seq)
        out[d] = {"loss": torch.cat(losses).mean().item(), **{f"p@{j}": match[j].float().mean().item() for j in (1, 3, 5)},
                  f"speedup@{k}": ar / sim}
    return out


def train_early_exit(target: Model, cfg: EarlyExitTrainConfig, artifact_dir: str | Path | None = None,
                     command: str = "") -> dict:
    """Run (or resume) the whole pipeline; returns the final metrics."""
    if hasattr(target.runner, "layer_stack"):  # the HF runner: refused up front where it has no per-layer access
        try:
            target.runner.layer_stack()
        except TokenleapError as exc:
            raise TokenleapError(f"tokenleap train early-exit needs the hidden states after the exit layers: {exc}"
                                 ) from None
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    num_layers = target.runner.num_layers
    layers = sorted({int(x) for x in cfg.layers.split(",") if 0 < int(x) < num_layers})
    if not layers:
        raise ValueError(f"no exit layer in {cfg.layers!r} lies in 1..{num_layers - 1}")
    ckpt_path = out / "checkpoint.pt"
    state = load_checkpoint(ckpt_path)
    # The data are fixed at the first run, so a resume sees the same shards even if more appeared.
    paths = [Path(p) for p in state["shards"]] if state else dataset_shards(
        target, cfg.data, DraftTrainConfig(out=cfg.out, prompts=cfg.prompts, max_new_tokens=cfg.max_new_tokens,
                                           top_k=cfg.top_k, seed=cfg.seed))
    train_paths = paths[:-1] or paths  # the last shard is held out
    with progress() as bar:
        task = bar.add_task("exit-layer features", total=len(paths), info="")
        parts = []
        for p in paths:
            parts.append(shard_features(target, p, layers, out / "features"))
            bar.update(task, advance=1)
    train, evald = merge(parts[:len(train_paths)], cfg.max_tokens), merge(parts[-1:])
    subset = vocabulary_subset([{"topk_ids": train["topk_ids"], "topk_logp": train["topk_logp"]}], cfg.vocab,
                               set(target.eos_token_ids))
    remap = torch.full((target.runner.vocab_size,), -1, dtype=torch.long)
    remap[subset] = torch.arange(len(subset))
    tgt_ids, tgt_p = soft_targets(train, remap)

    heads = new_heads(target, layers, subset)
    costs = {d: h.cost_params() / layer_size(target.runner) for d, h in heads.items()}
    params = [p for h in heads.values() for p in h.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    step, history, seconds = 0, [], 0.0
    if state:
        for d, h in heads.items():
            h.load_state_dict(state["heads"][d])
        opt.load_state_dict(state["optimizer"])
        step, history, seconds = state["step"], state["history"], state["seconds"]
    else:
        history.append({"step": 0, "eval": evaluate(heads, evald, remap, num_layers, costs, cfg.candidates)})

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {"heads": {d: h.state_dict() for d, h in heads.items()},
                                    "optimizer": opt.state_dict(), "step": step, "history": history,
                                    "seconds": seconds + time.perf_counter() - started,
                                    "shards": [str(p) for p in paths], "config": asdict(cfg)})

    gen = torch.Generator().manual_seed(cfg.seed + step)
    started = time.perf_counter()
    n = len(tgt_ids)
    with progress() as bar:
        task = bar.add_task("distilling exit heads", total=cfg.steps, completed=step, info="")
        while step < cfg.steps:
            if cfg.max_minutes and time.perf_counter() - started > 60 * cfg.max_minutes:
                bar.console.print(f"time limit reached at step {step}; run again to resume")
                break
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = torch.randint(n, (min(cfg.tokens_per_step, n),), generator=gen)
            loss = heads_loss(heads, {d: f[idx] for d, f in train["feats"].items()}, tgt_ids[idx], tgt_p[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            entry = {"step": step, "loss": loss.item() / len(heads)}
            if step % cfg.eval_every == 0 or step == cfg.steps:
                entry["eval"] = evaluate(heads, evald, remap, num_layers, costs, cfg.candidates)
                bar.console.print(f"step {step}: " + ", ".join(
                    f"d={d} p@{cfg.candidates}={e[f'p@{cfg.candidates}']:.3f} loss={e['loss']:.3f}"
                    for d, e in entry["eval"].items()))
            history.append(entry)
            with open(out / "history.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
            bar.update(task, advance=1, info=f"loss {entry['loss']:.3f}")
            if step % cfg.save_every == 0 or step == cfg.steps:
                checkpoint()
    checkpoint()
    seconds += time.perf_counter() - started
    final = evaluate(heads, evald, remap, num_layers, costs, cfg.candidates)
    best = max(final, key=lambda d: final[d][f"speedup@{cfg.candidates}"])
    metrics = {"steps": step, "train_seconds": seconds, "train_positions": n, "eval_positions": len(evald["topk_ids"]),
               "vocab_coverage": float((remap[evald["topk_ids"][:, 0].long()] >= 0).float().mean()),
               "head_cost_layers": costs, "default_layer": best, "eval": final, "eval_at_start": history[0]["eval"]}
    if artifact_dir:
        artifact_dir = Path(artifact_dir)
        save_heads(heads, subset, target, artifact_dir, {"default_layer": best, "eval": final})
        (artifact_dir / "training.json").write_text(json.dumps(
            {"command": command, "train_seconds": seconds, "config": asdict(cfg),
             "shards": [p.name for p in paths], "metrics": metrics}, indent=2))
    return metrics
