"""PaSS: parallel speculative sampling with learned lookahead tokens (Monea et al. 2023).

One model drafts for itself. L extra input positions ("lookahead tokens", each a learned
embedding fed through `runner.forward(embeds=...)`, the weights untouched) follow the last
real token; their rows predict tokens further ahead. One iteration is two calls:

  drafting:   [x_t, LA_1..LA_L] -> y ~ p(.|x<=t) from x_t's row (exact, needs no check),
              d_i ~ q_i from LA_i's row (a guess for x_(t+1+i)); the lookahead K/V is dropped.
  validation: [y, d_1..d_L] -> p_1..p_(L+1); the speculative-sampling rule of `sps` accepts
              a prefix of the drafts and emits one more token z; rejected K/V is rolled back.

So every iteration emits 2..L+2 tokens for 2 forwards. Merged variant (ours, still lossless):
LA_1..LA_L also follow d_L in the validation call; when every draft is accepted, z plays the
part of the next y and those rows are already the next drafts, so the next drafting call is
skipped. Greedy (temperature 0) needs nothing special: warped distributions are one-hot.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..decoding.cache import KVCache
from ..decoding.context import DecodeContext, decode_one_token, uncached
from ..decoding.warping import next_token, pick, warp
from ..errors import TokenleapError
from ..models.loading import Model
from ..models.registry import ARTIFACTS, REGISTRY
from .sps import accept_drafts

INITS = ("mean", "zero", "random")  # untrained embeddings; "mean" is the paper's starting point
TENSOR_KEY = "lookahead"  # the [L, d] tensor inside a lookahead .safetensors file


@dataclass
class PaSSOptions:
    lookahead: int = 4  # L: lookahead tokens, i.e. drafts per iteration
    merged: bool = False  # also append the lookahead tokens to the validation call
    embeddings: str = "auto"  # auto | mean | zero | random | path/to/lookahead.safetensors

    def validate(self) -> None:
        if not isinstance(self.lookahead, int) or isinstance(self.lookahead, bool) or self.lookahead < 1:
            raise TokenleapError(f"lookahead must be an integer >= 1, got {self.lookahead}")
        spec = self.embeddings
        if spec != "auto" and spec not in INITS:
            if not spec.endswith(".safetensors"):
                raise TokenleapError(f"unknown embeddings {spec!r}: use auto, mean, zero, random "
                                     "or a path to a .safetensors file")
            if not Path(spec).expanduser().is_file():
                raise TokenleapError(f"lookahead embeddings file not found: {spec}")


# -- the lookahead embeddings ---------------------------------------------------------------
def trained_path(model: Model) -> Path | None:
    """The committed embeddings (`tokenleap train lookahead`) for a registry model, if any."""
    if model.name not in REGISTRY:
        return None
    path = ARTIFACTS / f"{model.name}-pass" / "lookahead.safetensors"
    return path if path.is_file() else None


def initial_embeddings(model: Model, kind: str, n: int) -> torch.Tensor:
    """Untrained lookahead embeddings [n, d] (float32): mean token embedding, zeros, or random
    with the embedding table's scale (fixed seed, so a run is reproducible)."""
    table = model.hf_model.get_input_embeddings().weight.detach().float()
    if kind == "mean":
        return table.mean(0).expand(n, -1).clone()
    if kind == "zero":
        return table.new_zeros(n, table.shape[1])
    if kind == "random":
        noise = torch.randn(n, table.shape[1], generator=torch.Generator().manual_seed(0))
        return noise * table.std() + table.mean(0)
    raise TokenleapError(f"unknown embeddings {kind!r}")


def load_embeddings(path: str | Path, hidden: int) -> torch.Tensor:
    """[m, d] float32 lookahead embeddings from a file written by `tokenleap train lookahead`."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(Path(path).expanduser()))
    except (SafetensorError, OSError) as exc:
        raise TokenleapError(f"cannot read lookahead embeddings {path}: {exc}") from None
    table = tensors.get(TENSOR_KEY)
    if table is None or table.ndim != 2 or table.shape[1] != hidden:
        shape = None if table is None else tuple(table.shape)
        raise TokenleapError(f"{path} must hold a {TENSOR_KEY!r} tensor of shape [L, {hidden}], got {shape}")
    return table.float()


_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()


def lookahead_embeddings(model: Model, spec: str, n: int) -> torch.Tensor:
    """The n lookahead embeddings [n, d] (float32) that `spec` names, cached per model."""
    hidden = model.hf_model.get_input_embeddings().weight.shape[1]
    path = trained_path(model) if spec == "auto" else None if spec in INITS else Path(spec).expanduser()
    key = (spec, n, path, path.stat().st_mtime_ns if path else None)
    per_model = _CACHE.setdefault(model.hf_model, {})
    if key in per_model:
        return per_model[key]
    if path is None:
        table = initial_embeddings(model, "mean" if spec == "auto" else spec, n)
    else:
        table = load_embeddings(path, hidden)
        if len(table) < n:
            if spec != "auto":
                raise TokenleapError(f"{path} holds {len(table)} lookahead embeddings; lookahead={n} needs {n}")
            # "auto" asked for more than were trained: the extra ones start untrained.
            table = torch.cat([table, initial_embeddings(model, "mean", n - len(table))])
        # A prefix of a trained set is itself a trained set: LA_i only ever sees LA_1..LA_(i-1).
        table = table[:n]
    per_model[key] = table
    return table


# -- one iteration ----------------------------------------------------------------------------
def drafting_call(ctx: DecodeContext, seq: list[int], cache: KVCache, la: torch.Tensor
                  ) -> tuple[int, list[int], torch.Tensor]:
    """[uncached tail, LA_1..LA_n] -> (y, drafts, q [n, V]); the cache keeps only real tokens."""
    runner = ctx.target.runner
    ids = uncached(seq, cache, runner.device)  # the whole prompt on the first call, else x_t
    n_tail = ids.shape[1]
    # Default positions put LA_i where x_(t+i) will be; the ordinary causal mask is all it needs.
    logits = runner.forward(cache, embeds=torch.cat([runner.embed(ids), la], 1))[0, n_tail - 1:]
    ctx.stats.target_forwards += 1
    cache.rollback(len(seq))  # drop the lookahead K/V: those positions are not tokens
    y = int(next_token(logits[0], ctx.sampling, ctx.generator))
    q = warp(logits[1:], ctx.sampling)
    return y, pick(q, ctx.sampling, ctx.generator).tolist(), q


def validation_call(ctx: DecodeContext, seq: list[int], cache: KVCache, drafts: list[int], q: torch.Tensor,
                    la: torch.Tensor | None) -> tuple[list[int], tuple[list[int], torch.Tensor] | None]:
    """[pending token, drafts (, LA...)] -> (new tokens: accepted drafts + one more, and the next
    round's (drafts, q) when merged lookahead rows came with a fully accepted round)."""
    runner = ctx.target.runner
    ids = uncached(seq + drafts, cache, runner.device)
    n_tail, n = ids.shape[1] - len(drafts), len(drafts)
    embeds = runner.embed(ids) if la is None else torch.cat([runner.embed(ids), la], 1)
    logits = runner.forward(cache, embeds=embeds)[0, n_tail - 1:]
    ctx.stats.target_forwards += 1
    p = warp(logits[: n + 1], ctx.sampling)  # p_1..p_(n+1): rows of the pending token and each draft
    accepted, z = accept_drafts(drafts, q, p, ctx.generator)
    ctx.stats.record_round(n, accepted)
    cache.rollback(len(seq) + accepted)  # z is pending; rejected drafts and LA rows are forgotten
    carried = None
    if la is not None and accepted == n:
        # The LA rows saw exactly the committed sequence before z, as a drafting call on x_t = d_n
        # would have; z is an exact draw from d_n's row, i.e. the next round's y.
        q_next = warp(logits[n + 1:], ctx.sampling)
        carried = (pick(q_next, ctx.sampling, ctx.generator).tolist(), q_next)
    return drafts[:accepted] + [z], carried


def decode(ctx: DecodeContext) -> Iterator[list[int]]:
    opts = ctx.options
    runner = ctx.target.runner
    la = lookahead_embeddings(ctx.target, opts.embeddings, opts.lookahead).to(runner.device, runner.dtype)[None]
    seq = list(ctx.prompt_ids)
    cache = ctx.new_cache(ctx.target, slack=64 + 2 * opts.lookahead)
    carried: tuple[list[int], torch.Tensor] | None = None
    while (room := ctx.room(seq)) > 0:
        if carried is None:
            if room < 3:  # no room for y, a draft and z: the last tokens come one by one
                block = [decode_one_token(ctx, ctx.target, seq, cache)]
                ctx.stats.target_forwards += 1
                seq.extend(block)
                yield block
                continue
            # Never draft past max_new_tokens or the context: y + n drafts + z <= room.
            y, drafts, q = drafting_call(ctx, seq, cache, la[:, : min(opts.lookahead, room - 2)])
            ctx.stats.extra["drafting_calls"] = ctx.stats.extra.get("drafting_calls", 0) + 1
            seq.append(y)
            yield [y]  # exact already: stream it before validating the drafts
            room -= 1
        else:
            drafts, q = carried
            ctx.stats.extra["drafting_skipped"] = ctx.stats.extra.get("drafting_skipped", 0) + 1
        # Merged: lookahead rows for the round after this one, only as many as it may use.
        n_next = min(opts.lookahead, room - len(drafts) - 2) if opts.merged else 0
        block, carried = validation_call(ctx, seq, cache, drafts, q, la[:, :n_next] if n_next > 0 else None)
        seq.extend(block)
        yield block
