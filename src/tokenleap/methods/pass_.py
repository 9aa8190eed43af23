"""PaSS: parallel speculative sampling with learned lookahead tokens (Monea et al. 2023).

One model drafts for itself. L extra input positions ("lookahead tokens", each a learned
embedding fed through `runner.forward(embeds=...)`, the weights untouched) follow the last
real token; their rows predict tokens further ahead. One iteration is two calls:

  drafting:   [x_t, LA_1..LA_L] -> y ~ p(.|x<=t) from x_t's row (exact, needs no check),
              d_i ~ q_i from LA_i's row (a guess for x_(t+1+i)); the lookahead K/V is dropped.
  validation: [y, d_1..d_L] -> p_1..p_(L+1); the speculative-sampling rule of `sps` accepts
              a prefix of the drafts and emits one more token z; rejected K/V is rolled back.

So every iteration emits 2..L+2 tokens for 2 forwards: scheme "two-call". Scheme "merged"
(still lossless): LA_1..LA_L also follow d_L in the validation call; when every draft is
accepted, z plays the part of the next y and those rows are already the next drafts, so the
next drafting call is skipped. Scheme "one-call" (ours, still lossless; the default, being the
fastest measured): a block LA_1..LA_L follows *every* row of the validation call (the pending
token and each draft; a tree mask lets each block see only the real rows up to its own), so
whichever prefix is accepted, the block after its last token holds the next drafts and no
drafting call is ever needed after the first: 1..L+1 tokens per forward. Extra rows cost
little next to streaming the weights once (8 rows ~1.2x one row here).
Greedy (temperature 0) needs nothing special: warped distributions are one-hot.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from ..decoding.cache import KVCache
from ..decoding.context import DecodeContext, decode_one_token, uncached
from ..decoding.warping import next_token, pick, sample, warp
from ..errors import TokenleapError
from ..models.loading import Model
from ..models.registry import ARTIFACTS, REGISTRY
from ..options import Options, option
from .sps import accept_drafts

INITS = ("mean", "zero", "random")  # untrained embeddings; "mean" is the paper's starting point
TENSOR_KEY = "lookahead"  # the [L, d] tensor inside a lookahead .safetensors file
SCHEMES = ("one-call", "two-call", "merged")
AUTO_CANDIDATES = 3


@dataclass
class PaSSOptions(Options):
    # Defaults: the fastest lossless setting measured on the default model (README, PaSS).
    lookahead: int = option(1, "L, lookahead tokens: drafts per iteration", minimum=1)
    scheme: str = option("one-call", "how the drafting and validation calls are arranged",
                         choices=SCHEMES)
    candidates: int = option(0, "one-call: guesses verified for the next position; 0 = auto", minimum=0)
    embeddings: str = option("auto", "lookahead embeddings: auto, mean, zero, random or a path to a "
                                     "lookahead .safetensors file")

    def check(self) -> None:
        if self.candidates > 1 and self.scheme != "one-call":
            raise TokenleapError("candidates > 1 needs scheme one-call (a tree of drafts is verified in one call)")
        check_embeddings_spec(self.embeddings, ("auto",) + INITS)

    @property
    def guesses(self) -> int:
        """Candidates for the next position: as set, or auto (3 in one call, where they paid
        most here; 1 otherwise)."""
        return self.candidates or (AUTO_CANDIDATES if self.scheme == "one-call" else 1)


def check_embeddings_spec(spec: str, kinds: tuple[str, ...]) -> None:
    """`spec` must be one of `kinds` or an existing .safetensors file (the decoding option and
    the trainer's --init both name embeddings this way)."""
    if spec in kinds:
        return
    if not spec.endswith(".safetensors"):
        raise TokenleapError(f"unknown embeddings {spec!r}: use {', '.join(kinds)} or a path to a .safetensors file")
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


@dataclass
class DraftTree:
    """Drafts for one one-call iteration: node k is `tokens[k]` after node `parents[k]` (-1: the
    pending token). Sampling: a chain (parents k-1) with each node's draft law in q, or, with
    candidates, the distinct tokens among i.i.d. `draws` from q[0] for the next position only."""

    tokens: list[int]
    parents: list[int]
    q: torch.Tensor | None = None
    draws: list[int] | None = None

    def depths(self) -> list[int]:
        out: list[int] = []
        for parent in self.parents:
            out.append(1 if parent < 0 else out[parent] + 1)
        return out


def draft_tree(block_logits: torch.Tensor, ctx: DecodeContext, max_depth: int) -> DraftTree:
    """Drafts from a lookahead block's logits [L, V] (LA_i guesses the i-th token after the
    pending one). Greedy: the `candidates` best guesses for the first, then the top-1 chain under
    the best one; sampling: a chain d_i ~ q_i, or with candidates that many i.i.d. draws from
    q_1 for the first position alone."""
    depth = min(max_depth, len(block_logits))
    if depth < 1:
        return DraftTree([], [])
    k = ctx.options.guesses
    if not ctx.sampling.greedy:
        q = warp(block_logits[: 1 if k > 1 else depth], ctx.sampling)
        if k == 1:
            return DraftTree(pick(q, ctx.sampling, ctx.generator).tolist(), list(range(-1, depth - 1)), q)
        draws = sample(q[0].expand(k, -1), ctx.generator).tolist()
        tokens = list(dict.fromkeys(draws))
        return DraftTree(tokens, [-1] * len(tokens), q, draws)
    first = block_logits[0].topk(k).indices.tolist()
    chain = block_logits[1:depth].argmax(-1).tolist()
    # The chain hangs under the best first guess (node 0), each node under the one before.
    chain_parents = [0] + list(range(len(first), len(first) + len(chain) - 1)) if chain else []
    return DraftTree(first + chain, [-1] * len(first) + chain_parents)


def accept_one_of(draws: list[int], q: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None
                  ) -> tuple[int | None, torch.Tensor]:
    """Recursive rejection over i.i.d. draws from q, lossless for any number of them: judge each
    draw by the sps rule against the current law, which becomes norm(max(0, p - q)) after every
    rejection (so a draw rejected once is never accepted later). Returns (the accepted draw, or
    None with the law an exact token must then come from)."""
    for d in draws:
        if torch.rand((), generator=generator, dtype=torch.float64) < p[d] / q[d]:
            return d, p
        residual = (p - q).clamp_min(0)
        # p == q up to round-off leaves nothing to renormalise; the next draw is then accepted.
        p = residual / residual.sum() if residual.sum() > 0 else p
    return None, p


def one_call_layout(n_tail: int, tree: DraftTree, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [tail, nodes, block_root, block_node_0, ...], each block = LA_1..LA_L after the
    pending token (root) or a node: (position offsets from the cache end, bool mask). The tail
    is plainly causal and a node sees the tail and its ancestors, so an accepted path's K/V
    are those of a plain pass; a block sees what its token sees, itself included, and its own
    earlier lookahead rows, at the positions a drafting call on that prefix would give them."""
    m = len(tree.tokens)
    depths = tree.depths()
    size = n_tail + m + (m + 1) * L
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[:n_tail, :n_tail] = torch.ones(n_tail, n_tail, dtype=torch.bool).tril()
    offsets = list(range(n_tail)) + [n_tail - 1 + d for d in depths]
    for k, parent in enumerate(tree.parents):
        row = n_tail + k
        mask[row] = mask[n_tail - 1] if parent < 0 else mask[n_tail + parent]
        mask[row, row] = True
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    for b, (owner, depth) in enumerate([(n_tail - 1, 0)] + [(n_tail + k, d) for k, d in enumerate(depths)]):
        rows = slice(n_tail + m + b * L, n_tail + m + (b + 1) * L)
        mask[rows] = mask[owner]
        mask[rows, rows] = causal
        offsets += range(n_tail + depth, n_tail + depth + L)
    return torch.tensor(offsets), mask


def one_call(ctx: DecodeContext, seq: list[int], cache: KVCache, tree: DraftTree, la: torch.Tensor
             ) -> tuple[list[int], torch.Tensor]:
    """[pending tail, draft nodes, LA blocks] -> (accepted drafts + one more token, the logits of
    the lookahead block after the last accepted token: the next drafts). With no drafts (the
    first call) this is a drafting call whose exact token comes from the tail's last row."""
    runner = ctx.target.runner
    start, m, L = cache.length, len(tree.tokens), la.shape[1]
    ids = torch.tensor([seq[start:] + tree.tokens], device=runner.device)
    n_tail = ids.shape[1] - m
    offsets, mask = one_call_layout(n_tail, tree, L)
    embeds = torch.cat([runner.embed(ids), la.expand(1, -1, -1).repeat(1, m + 1, 1)], 1)
    logits = runner.forward(cache, embeds=embeds, positions=start + offsets.to(runner.device), attn_mask=mask)[0]
    ctx.stats.target_forwards += 1
    if ctx.sampling.greedy:
        # Walk down from the pending token while a child is the target's argmax.
        path, row = [], n_tail - 1
        while True:
            z = int(logits[row].argmax())
            child = next((k for k, (t, par) in enumerate(zip(tree.tokens, tree.parents))
                          if t == z and par == (path[-1] if path else -1)), None)
            if child is None:
                break
            path.append(child)
            row = n_tail + child
    elif tree.draws:  # several guesses for one position
        token, law = accept_one_of(tree.draws, tree.q[0], warp(logits[n_tail - 1], ctx.sampling), ctx.generator)
        path = [] if token is None else [tree.tokens.index(token)]
        if path:
            law = warp(logits[n_tail + path[0]], ctx.sampling)
        z = int(sample(law, ctx.generator))
    else:  # a chain, judged by the sps rule
        p = warp(logits[n_tail - 1: n_tail + m], ctx.sampling)
        accepted, z = accept_drafts(tree.tokens, tree.q, p, ctx.generator)
        path = list(range(accepted))
    if m:
        ctx.stats.record_round(max(tree.depths()), len(path))
        if ctx.sampling.greedy and ctx.options.guesses > 1:
            # Which of the first guesses (best first) the target took: says what k pays.
            key = f"pass_rank_{path[0] + 1}" if path else "pass_rank_none"
            ctx.stats.extra[key] = ctx.stats.extra.get(key, 0) + 1
    # Keep the accepted path's K/V after the tail; z is pending; other nodes and every LA row go.
    cache.keep_positions(start + n_tail, torch.tensor(path, dtype=torch.long))
    block = n_tail + m + (1 + path[-1] if path else 0) * L
    return [tree.tokens[k] for k in path] + [z], logits[block: block + L]


def decode_one_call(ctx: DecodeContext, la: torch.Tensor) -> Iterator[list[int]]:
    seq = list(ctx.prompt_ids)
    k = ctx.options.guesses
    cache = ctx.new_cache(ctx.target, slack=64 + (la.shape[1] + 1) * (la.shape[1] + k + 1))
    block_logits = None  # the first call has no drafts: it is a drafting call
    while (room := ctx.room(seq)) > 0:
        # Never draft past max_new_tokens or the context: accepted drafts + z <= room.
        tree = DraftTree([], []) if block_logits is None else draft_tree(block_logits, ctx, room - 1)
        if not tree.tokens:  # the first call, and the last when one token is left
            ctx.stats.extra["drafting_calls"] = ctx.stats.extra.get("drafting_calls", 0) + 1
        block, block_logits = one_call(ctx, seq, cache, tree, la)
        seq.extend(block)
        yield block


def decode(ctx: DecodeContext) -> Iterator[list[int]]:
    opts = ctx.options
    runner = ctx.target.runner
    la = lookahead_embeddings(ctx.target, opts.embeddings, opts.lookahead).to(runner.device, runner.dtype)[None]
    if opts.scheme == "one-call":
        yield from decode_one_call(ctx, la)
        return
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
        n_next = min(opts.lookahead, room - len(drafts) - 2) if opts.scheme == "merged" else 0
        block, carried = validation_call(ctx, seq, cache, drafts, q, la[:, :n_next] if n_next > 0 else None)
        seq.extend(block)
        yield block
