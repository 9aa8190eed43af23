"""`tokenleap train draft`: distil a small draft model from a target (self-distillation).

1. data: the target answers training prompts (disjoint from Spec-Bench) — greedily, the way the
   benchmark decodes — and we store, for every generated position, its top-k log-probs.
2. model: a model of the target's own family (its transformers class, its config with fewer
   layers) holding a few of the target's layers, sharing its token embeddings and output head
   (frozen), so only the layers, the final norm and whatever else the family has outside its
   layers (GPT-2's position embeddings, OPT's projections) train.
3. loss: cross-entropy of the draft against the target's top-k distribution, restricted to a
   reduced vocabulary (the most frequent generated tokens). The reduced head is what makes a
   draft forward cheap; verification stays exact because the draft simply never proposes
   tokens outside it.
4. export: the trained weights (bf16) + config + vocabulary subset, small enough to commit; the
   embeddings and head are taken from the target when the draft is assembled
   (`models.draft_assembly`).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedConfig, PreTrainedModel

from ..errors import TokenleapError
from ..models.draft_assembly import shared_weights
from ..models.layered import decoder_layers, final_logit_cap, soft_cap
from ..models.loading import Model
from ..options import Options, option
from .common import load_checkpoint, mixed_precision, progress, save_checkpoint, seed_everything
from .prompts import corpus_prompts, document_prompts, training_prompts

SHARD_SIZE = 96


@dataclass
class DraftTrainConfig(Options):
    out: str = option("runs/draft", "run directory (data, checkpoints, history); a rerun resumes it")
    prompts: int = option(4096, "training prompts; the target writes documents first for prompts // 8 of them")
    max_new_tokens: int = option(160, "tokens the target writes per prompt")
    top_k: int = option(32, "target log-probs kept per position")
    layers: str = option("0,1,2,29", "comma-separated target layers the draft starts from")
    vocab: int = option(8192, "size of the reduced draft vocabulary")
    steps: int = option(3000, "optimiser steps")
    tokens_per_step: int = option(4096, "training tokens per step")
    lr: float = option(5e-4, "peak learning rate")
    warmup: int = option(50, "learning-rate warm-up steps")
    seed: int = option(0, "seed of prompts, shuffling and initialisation")
    eval_every: int = option(100, "steps between held-out evaluations")
    save_every: int = option(25, "steps between checkpoints")
    init_from: str = option("", "a draft artifact directory to start the layers from; '' = the target's layers")
    # Checked where the prompts are made (build_dataset), which also serves configs built in Python.
    prompt_set: str = option("templates", "templates (documents + templated tasks) or corpora (real text)")
    data: str = option("", "comma-separated data directories of earlier runs to train on; '' = write new data")


# -- 1. data -----------------------------------------------------------------------------
def build_dataset(target: Model, cfg: DraftTrainConfig) -> list[Path]:
    """Generate (or resume generating) shards of target-written sequences with top-k targets.

    prompt_set "corpora": the target answers prompts over real text (`prompts.corpus_prompts`).
    prompt_set "templates": two passes; the target first writes documents (articles, reports),
    then answers templated prompts, a third of which summarise those documents or answer
    questions over them, as Spec-Bench's long-input categories do."""
    data_dir = Path(cfg.out) / "data"
    if cfg.prompt_set == "corpora":
        prompts = sorted(corpus_prompts(cfg.prompts, cfg.seed), key=len)
        return write_shards(target, prompts, data_dir / "corpus", cfg, cfg.max_new_tokens)
    if cfg.prompt_set != "templates":
        raise TokenleapError(f"unknown prompt set {cfg.prompt_set!r}; use templates or corpora")
    docs = document_prompts(max(1, cfg.prompts // 8), cfg.seed)
    # Documents get twice the answer length: long inputs are the point of them.
    doc_paths = write_shards(target, [p for _, p in docs], data_dir / "doc", cfg, 2 * cfg.max_new_tokens)
    texts = [target.decode(r["ids"][r["start"] + 1:].tolist()).strip() for r in load_records(doc_paths)]
    documents = [(subject, text) for (subject, _), text in zip(docs, texts) if text]
    prompts = training_prompts(cfg.prompts - len(docs), cfg.seed, documents)
    # Similar lengths share a shard (less padding); training shuffles shards' sequences anyway.
    prompts.sort(key=len)
    return doc_paths + write_shards(target, prompts, data_dir / "task", cfg, cfg.max_new_tokens)


def dataset_shards(target: Model, data: str, cfg: DraftTrainConfig) -> list[Path]:
    """The data shards a trainer reads: those of earlier runs in `data` (comma-separated
    directories, read only), or, when `data` is '', the ones `build_dataset` writes (or
    resumes) under cfg.out."""
    if not data:
        return build_dataset(target, cfg)
    return shards_in(data)


def shards_in(dirs: str) -> list[Path]:
    """The data shards in comma-separated directories, each of which must hold some."""
    paths = []
    for d in filter(None, (x.strip() for x in dirs.split(","))):
        found = sorted(Path(d).expanduser().glob("*shard-*.pt"))
        if not found:
            raise TokenleapError(f"no data shards (*shard-*.pt) in {d}")
        paths += found
    return paths


def write_shards(target: Model, prompts: list[str], prefix: Path, cfg: DraftTrainConfig,
                 max_new_tokens: int) -> list[Path]:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    shards = [prompts[i:i + SHARD_SIZE] for i in range(0, len(prompts), SHARD_SIZE)]
    paths = [prefix.parent / f"{prefix.name}-shard-{i:04d}.pt" for i in range(len(shards))]
    todo = [i for i, p in enumerate(paths) if not p.is_file()]
    with progress() as bar:
        task = bar.add_task(f"target writes training text ({prefix.name})", total=len(shards),
                            completed=len(shards) - len(todo), info="")
        for i in todo:
            start = time.perf_counter()
            records = generate_batch(target, shards[i], max_new_tokens, cfg.top_k)
            save_checkpoint(paths[i], {"records": records, "prompts": shards[i]})
            n = sum(len(r["topk_ids"]) for r in records)
            bar.update(task, advance=1, info=f"{n / (time.perf_counter() - start):.0f} tok/s")
    return paths


class _TopK(LogitsProcessor):
    """Records the top-k log-probs of every decoding step, leaving the scores untouched."""

    def __init__(self, k: int) -> None:
        self.k, self.ids, self.logp = k, [], []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        top = scores.float().log_softmax(-1).topk(self.k, dim=-1)
        self.ids.append(top.indices.to(torch.int32))
        self.logp.append(top.values.to(torch.float16))
        return scores


@torch.no_grad()
def generate_batch(target: Model, prompts: list[str], max_new_tokens: int, top_k: int) -> list[dict]:
    """Greedy answers for a batch of prompts (left-padded HF generate), each a record with the
    target's top-k log-probs at every position that predicts a generated token (taken from
    the decoding step itself, so no second forward)."""
    encoded = [target.encode(p) for p in prompts]
    width = max(len(e) for e in encoded)
    pad = sorted(target.eos_token_ids)[0]
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    recorder = _TopK(top_k)
    out = target.hf_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                   do_sample=False, pad_token_id=pad, eos_token_id=sorted(target.eos_token_ids),
                                   logits_processor=LogitsProcessorList([recorder]))
    topk_ids, topk_logp = torch.stack(recorder.ids, 1), torch.stack(recorder.logp, 1)
    records = []
    for b, (e, row) in enumerate(zip(encoded, out[:, width:].tolist())):
        n = next((j + 1 for j, t in enumerate(row) if t in target.eos_token_ids), len(row))
        records.append({"ids": torch.tensor(e + row[:n], dtype=torch.int32), "start": len(e) - 1,
                        "topk_ids": topk_ids[b, :n].clone(), "topk_logp": topk_logp[b, :n].clone()})
    return records


def load_records(paths: list[Path]) -> list[dict]:
    return [r for p in paths for r in torch.load(p, weights_only=False)["records"]]


def vocabulary_subset(records: list[dict], size: int, always: set[int]) -> torch.Tensor:
    """The `size` token ids the target most often puts first, plus `always` (EOS...), sorted."""
    counts = torch.zeros(int(max(r["topk_ids"].max() for r in records)) + 1, dtype=torch.float64)
    for r in records:
        # weight by the target's probability so near-misses count too
        counts.index_add_(0, r["topk_ids"].long().flatten(), r["topk_logp"].double().exp().flatten())
    top = set(counts.topk(min(size - len(always), len(counts))).indices.tolist()) | always
    return torch.tensor(sorted(top), dtype=torch.long)


# -- 2. model -----------------------------------------------------------------------------
def draft_config(config: PreTrainedConfig, layers: list[int]) -> PreTrainedConfig:
    """The target's own config with only `layers` kept. Per-layer fields follow the kept layers:
    `layer_types` (which layers slide: Gemma 2/3, Qwen, Mistral's windows) is sliced, and
    transformers gives each layer of the draft its own index (the cache's) when it builds it."""
    config = copy.deepcopy(config)
    text = config.get_text_config(decoder=True)
    kinds = getattr(text, "layer_types", None)
    text.num_hidden_layers = len(layers)
    if kinds is not None:
        text.layer_types = [kinds[j] for j in layers]
    return config


def init_draft(target: Model, layers: list[int]) -> PreTrainedModel:
    """A model of the target's family (its own transformers class) with the chosen target layers,
    and everything else of the target's: token embeddings and head (shared and frozen; tied as
    the target's are), final norm, and whatever the family has outside its layers."""
    hf = target.hf_model
    total = hf.config.get_text_config(decoder=True).num_hidden_layers
    if not layers or any(not 0 <= j < total for j in layers):
        raise TokenleapError(f"draft layers must be in 0..{total - 1} for a {total}-layer target, got {layers}")
    draft = type(hf)(draft_config(hf.config, layers)).float()
    # The layers are found from the models' own structure (`models.layered`), not by attribute name.
    src_decoder, src_name = decoder_layers(hf)
    dst_decoder, dst_name = decoder_layers(draft)
    src_layers, dst_layers = getattr(src_decoder, src_name), getattr(dst_decoder, dst_name)
    prefix = next(name for name, m in hf.named_modules() if m is src_layers) + "."
    with torch.no_grad():
        rest = {k: v for k, v in hf.state_dict().items() if not k.startswith(prefix)}
        missing, unexpected = draft.load_state_dict(rest, strict=False)
        for i, j in enumerate(layers):
            dst_layers[i].load_state_dict(src_layers[j].state_dict())
    if unexpected or any(not k.startswith(prefix) for k in missing):
        raise TokenleapError(f"cannot build a draft of model type {hf.config.model_type!r}: its weights outside "
                             f"the layers do not fit a shorter model ({(unexpected or missing)[0]})")
    shared = shared_weights(draft)
    for name, p in draft.named_parameters(remove_duplicate=False):
        if name in shared:
            p.requires_grad_(False)
    return draft


def load_layers(draft: PreTrainedModel, artifact_dir: Path) -> None:
    """Start from an exported draft's weights (e.g. to continue on new data: they do not depend
    on the vocabulary subset, which is recomputed from the data)."""
    path = artifact_dir / "draft_layers.safetensors"
    if not path.is_file():
        raise TokenleapError(f"--init-from: no draft_layers.safetensors in {artifact_dir}")
    try:
        missing, unexpected = draft.load_state_dict(
            {k: v.float() for k, v in load_file(str(path)).items()}, strict=False)
    except RuntimeError:  # shapes differ: another width or head layout
        missing, unexpected = [], ["(size mismatch)"]
    if unexpected or set(missing) - shared_weights(draft):
        layers = draft.config.get_text_config(decoder=True).num_hidden_layers
        raise TokenleapError(f"--init-from: {path} does not fit a {layers}-layer draft of this target")


# -- 3. training --------------------------------------------------------------------------
def batches(records: list[dict], tokens_per_step: int, rng: random.Random):
    """Endless shuffled batches of similar-length sequences, about tokens_per_step tokens each."""
    order = sorted(range(len(records)), key=lambda i: len(records[i]["ids"]))
    groups, cur, cur_tokens = [], [], 0
    for i in order:
        cur.append(i)
        cur_tokens = len(records[i]["ids"]) * len(cur)
        if cur_tokens >= tokens_per_step:
            groups.append(cur)
            cur, cur_tokens = [], 0
    if cur:
        groups.append(cur)
    while True:
        rng.shuffle(groups)
        yield from groups


def reduced_logits(draft: PreTrainedModel, hidden: torch.Tensor, subset: torch.Tensor) -> torch.Tensor:
    """The draft's own head (its output embeddings, bias and final soft-capping: Gemma 2's) on its
    decoder's output, over the reduced vocabulary only: what the full head gives, at those ids."""
    out = draft.get_output_embeddings()
    logits = F.linear(hidden, out.weight[subset], None if out.bias is None else out.bias[subset])
    return soft_cap(logits, final_logit_cap(draft.config))


def distill_loss(draft: PreTrainedModel, batch: list[dict], subset: torch.Tensor, remap: torch.Tensor
                 ) -> tuple[torch.Tensor, float]:
    """Cross-entropy of the reduced-vocabulary draft against the target's renormalised top-k.
    Returns (loss, top-1 agreement with the target on this batch)."""
    width = max(len(r["ids"]) for r in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)  # right padding: real positions never see it
    for b, r in enumerate(batch):
        ids[b, : len(r["ids"])] = r["ids"].long()
    hidden = draft.get_decoder()(input_ids=ids).last_hidden_state
    rows, tgt_ids, tgt_p = [], [], []
    for b, r in enumerate(batch):
        n = len(r["topk_ids"])
        rows.append(hidden[b, r["start"]: r["start"] + n])
        local = remap[r["topk_ids"].long()]  # -1 where the token is outside the subset
        p = r["topk_logp"].float().exp() * (local >= 0)
        tgt_ids.append(local.clamp_min(0))
        tgt_p.append(p / p.sum(-1, keepdim=True).clamp_min(1e-9))
    logq = reduced_logits(draft, torch.cat(rows), subset).float().log_softmax(-1)
    tgt_ids, tgt_p = torch.cat(tgt_ids), torch.cat(tgt_p)
    loss = -(tgt_p * logq.gather(-1, tgt_ids)).sum(-1).mean()
    agree = (logq.argmax(-1) == tgt_ids[:, 0]).float().mean().item()
    return loss, agree


@torch.no_grad()
def evaluate(draft: PreTrainedModel, records: list[dict], subset, remap) -> tuple[float, float]:
    draft.eval()
    losses, agrees = [], []
    for i in range(0, len(records), 8):
        with mixed_precision(draft.device):
            loss, agree = distill_loss(draft, records[i:i + 8], subset, remap)
        losses.append(loss.item())
        agrees.append(agree)
    draft.train()
    return sum(losses) / len(losses), sum(agrees) / len(agrees)


def train_draft(target: Model, cfg: DraftTrainConfig, artifact_dir: str | Path | None = None) -> dict:
    """Run (or resume) the whole pipeline; returns the final metrics."""
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)  # with --data nothing else creates it
    paths = dataset_shards(target, cfg.data, cfg)
    everything = load_records(paths)
    # Every 32nd sequence is held out: all kinds of prompt, never trained on.
    records = [r for i, r in enumerate(everything) if i % 32] or everything
    eval_records = everything[::32]
    subset = vocabulary_subset(records, cfg.vocab, set(target.eos_token_ids))
    remap = torch.full((target.runner.vocab_size,), -1, dtype=torch.long)
    remap[subset] = torch.arange(len(subset))
    covered = sum(int((remap[r["topk_ids"][:, 0].long()] >= 0).sum()) for r in records) / \
        sum(len(r["topk_ids"]) for r in records)

    draft = init_draft(target, [int(x) for x in cfg.layers.split(",")])
    if cfg.init_from:
        load_layers(draft, Path(cfg.init_from).expanduser())
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    ckpt_path = out / "checkpoint.pt"
    state = load_checkpoint(ckpt_path)
    step, history = 0, []
    if state:
        draft.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
    rng = random.Random(cfg.seed + step)
    stream = batches(records, cfg.tokens_per_step, rng)
    started = time.perf_counter()
    draft.train()
    with progress() as bar:
        task = bar.add_task("distilling the draft", total=cfg.steps, completed=step, info="")
        while step < cfg.steps:
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))
            for g in opt.param_groups:
                g["lr"] = lr
            with mixed_precision(draft.device):
                loss, agree = distill_loss(draft, [records[i] for i in next(stream)], subset, remap)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            entry = {"step": step, "loss": loss.item(), "agree": agree}
            if step % cfg.eval_every == 0 or step == cfg.steps:
                entry["eval_loss"], entry["eval_agree"] = evaluate(draft, eval_records, subset, remap)
            history.append(entry)
            bar.update(task, advance=1, info=f"loss {loss.item():.3f} agree {agree:.2f}"
                       + (f" | held-out agree {entry['eval_agree']:.3f}" if "eval_agree" in entry else ""))
            if step % cfg.save_every == 0 or step == cfg.steps:
                save_checkpoint(ckpt_path, {"model": draft.state_dict(), "optimizer": opt.state_dict(),
                                            "step": step, "history": history, "config": asdict(cfg)})
            with open(out / "history.jsonl", "a") as f:
                f.write(json.dumps(entry) + "\n")
    metrics = {"steps": step, "vocab_coverage": covered, "train_seconds_this_run": time.perf_counter() - started,
               "sequences": len(records), "tokens": sum(len(r["topk_ids"]) for r in records),
               "last": history[-1] if history else None,
               "eval": next((h for h in reversed(history) if "eval_agree" in h), None)}
    if artifact_dir:
        # Score exactly the weights that are exported, on the held-out sequences.
        metrics["export_eval_loss"], metrics["export_eval_agree"] = evaluate(draft, eval_records, subset, remap)
        export_draft(draft, subset, cfg, metrics, Path(artifact_dir))
    return metrics


# -- 4. export ----------------------------------------------------------------------------
def export_draft(draft: PreTrainedModel, subset: torch.Tensor, cfg: DraftTrainConfig, metrics: dict,
                 artifact_dir: Path) -> None:
    """Write what is committed: the draft's own weights (bf16: everything but the target's
    embeddings and head), its config (the target's family's), vocabulary subset, training record."""
    artifact_dir.mkdir(parents=True, exist_ok=True)
    shared = shared_weights(draft)
    weights = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in draft.state_dict().items()
               if k not in shared}
    save_file(weights, str(artifact_dir / "draft_layers.safetensors"), metadata={"format": "pt"})
    draft.config.to_json_file(str(artifact_dir / "config.json"))
    (artifact_dir / "vocab_subset.json").write_text(json.dumps(subset.tolist()))
    config = asdict(cfg)
    if cfg.data:  # earlier runs' data was used: the settings that would have written it did nothing
        config.update(prompts=None, max_new_tokens=None, top_k=None, prompt_set=None)
    (artifact_dir / "training.json").write_text(json.dumps({"config": config, "metrics": metrics}, indent=2))
