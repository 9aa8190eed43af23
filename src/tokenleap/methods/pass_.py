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

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from ..decoding import accept
from ..decoding.cache import KVCache
from ..decoding.context import DecodeContext, decode_one_token
from ..decoding.stats import MethodStats
from ..decoding.verify import tree_layout, verify_chain, verify_tree
from ..decoding.warping import next_token, sample, warp
from ..drafters import lookahead as drafts
from ..drafters.lookahead import DraftTree
from ..drafters.prompt_lookup import PromptLookupDrafter
from ..errors import TokenleapError
from ..markdown import table
from ..models.lookahead import INITS, check_spec, lookahead_embeddings
from ..options import Options, option

SCHEMES = ("one-call", "two-call", "merged")
AUTO_CANDIDATES = 3
AUTO_LOOKUP = 4  # pass@lookup=4: 1.43x ar against 1.19x without (docs/bench/pass-lookup-dev24)


@dataclass
class PaSSOptions(Options):
    # Defaults: the fastest lossless setting measured on the default model (README, PaSS).
    lookahead: int = option(1, "L, lookahead tokens: drafts per iteration", minimum=1)
    scheme: str = option("one-call", "how the drafting and validation calls are arranged",
                         choices=SCHEMES)
    candidates: int = option(0, "one-call: guesses verified for the next position; 0 = auto", minimum=0)
    embeddings: str = option("auto", "lookahead embeddings: auto, mean, zero, random or a path to a "
                                     "lookahead .safetensors file")
    lookup: int = option(-1, "greedy one-call: also verify up to this many prompt-lookup drafts (a branch of "
                             "the tree, copied from earlier text as pld does); 0 = off, -1 = auto (4 with "
                             "one-call, the fastest measured; 0 otherwise)", minimum=-1, maximum=32)

    def check(self) -> None:
        if self.candidates > 1 and self.scheme != "one-call":
            raise TokenleapError("candidates > 1 needs scheme one-call (a tree of drafts is verified in one call)")
        if self.lookup > 0 and self.scheme != "one-call":
            raise TokenleapError("lookup > 0 needs scheme one-call (its drafts are a branch of the one-call tree)")
        check_spec(self.embeddings, ("auto",) + INITS)

    @property
    def lookups(self) -> int:
        """Prompt-lookup drafts per one-call tree: as set, or auto (AUTO_LOOKUP with one-call)."""
        return self.lookup if self.lookup >= 0 else (AUTO_LOOKUP if self.scheme == "one-call" else 0)

    @property
    def guesses(self) -> int:
        """Candidates for the next position: as set, or auto (3 in one call, where they paid
        most here; 1 otherwise)."""
        return self.candidates or (AUTO_CANDIDATES if self.scheme == "one-call" else 1)


@dataclass
class PaSSStats(MethodStats):
    drafting_calls: int = 0  # target calls that only drafted (no drafts to verify yet)
    drafting_skipped: int = 0  # merged: drafting calls saved by a fully accepted round
    # Greedy one-call with several guesses: rounds in which the target took the j-th best guess
    # (key "j", best first) or none of them ("none"); says what one more candidate pays.
    guess_taken: dict[str, int] = field(default_factory=dict)
    # Greedy one-call with `lookup`: prompt-lookup drafts added to the tree (beyond the lookahead
    # guesses they coincided with), and tokens accepted along them.
    lookup_proposed: int = 0
    lookup_accepted: int = 0

    @classmethod
    def report(cls, runs: dict[str, list[dict[str, Any]]], results: dict[str, Any]) -> list[str]:
        counts: dict[str, dict[str, int]] = {}
        for name, recs in runs.items():
            for r in recs:
                for rank, n in r["stats"]["method_stats"]["guess_taken"].items():
                    per = counts.setdefault(name, {})
                    per[rank] = per.get(rank, 0) + n
        if not counts:
            return []
        width = max((int(k) for per in counts.values() for k in per if k.isdigit()), default=0)
        rows = []
        for name, per in counts.items():
            rounds = sum(per.values())
            hits = [per.get(str(j), 0) / rounds for j in range(1, width + 1)] + [per.get("lookup", 0) / rounds]
            rows.append([name, f"{rounds:.0f}"] + [f"{h:.3f}" for h in hits] + [f"{sum(hits):.3f}"])
        lines = ["", "## PaSS candidates: which guess the target took", "",
                 "Share of drafting rounds in which the target's token was the j-th best guess of the "
                 "lookahead block, or a prompt-lookup draft (`lookup`; greedy runs with `candidates` > 1).", ""]
        return lines + table(["method", "rounds"] + [f"rank {j}" for j in range(1, width + 1)] + ["lookup", "any"],
                             rows)


# -- two-call and merged ----------------------------------------------------------------------
def drafting_call(ctx: DecodeContext, seq: list[int], cache: KVCache, la: torch.Tensor
                  ) -> tuple[int, list[int], torch.Tensor]:
    """[uncached tail, LA_1..LA_n] -> (y, drafts, q [n, V]); the cache keeps only real tokens."""
    # Default positions put LA_i where x_(t+i) will be; the ordinary causal mask is all it needs.
    logits = verify_chain(ctx.target_runner, cache, seq, [], extra_embeds=la)
    cache.rollback(len(seq))  # drop the lookahead K/V: those positions are not tokens
    y = int(next_token(logits[0], ctx.sampling, ctx.generator))
    return (y, *drafts.chain(logits[1:], ctx))


def validation_call(ctx: DecodeContext, seq: list[int], cache: KVCache, chain: list[int], q: torch.Tensor,
                    la: torch.Tensor | None) -> tuple[list[int], tuple[list[int], torch.Tensor] | None]:
    """[pending token, drafts (, LA...)] -> (new tokens: accepted drafts + one more, and the next
    round's (drafts, q) when merged lookahead rows came with a fully accepted round)."""
    n = len(chain)
    logits = verify_chain(ctx.target_runner, cache, seq, chain, extra_embeds=la)
    p = warp(logits[: n + 1], ctx.sampling)  # p_1..p_(n+1): rows of the pending token and each draft
    accepted, z = accept.speculative(chain, q, p, ctx.generator)
    ctx.stats.record_round(n, accepted)
    cache.rollback(len(seq) + accepted)  # z is pending; rejected drafts and LA rows are forgotten
    carried = None
    if la is not None and accepted == n:
        # The LA rows saw exactly the committed sequence before z, as a drafting call on x_t = d_n
        # would have; z is an exact draw from d_n's row, i.e. the next round's y.
        carried = drafts.chain(logits[n + 1:], ctx)
    return chain[:accepted] + [z], carried


# -- one-call ---------------------------------------------------------------------------------
def one_call_layout(n_tail: int, tree: DraftTree, L: int) -> tuple[list[int], torch.Tensor]:
    """Rows [tail, nodes, block_root, block_node_0, ...], each block = LA_1..LA_L after the
    pending token (root) or a node: (position offsets from the cache end, bool mask). Tail and
    nodes are laid out as any verified tree (`tree_layout`); a block sees what its token sees,
    itself included, and its own earlier lookahead rows, at the positions a drafting call on
    that prefix would give them."""
    m = len(tree.tokens)
    offsets, mask = tree_layout(n_tail, tree.parents, extra_rows=(m + 1) * L)
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    for b, (owner, depth) in enumerate([(n_tail - 1, 0)] + [(n_tail + k, d) for k, d in enumerate(tree.depths())]):
        rows = slice(n_tail + m + b * L, n_tail + m + (b + 1) * L)
        mask[rows] = mask[owner]
        mask[rows, rows] = causal
        offsets += range(n_tail + depth, n_tail + depth + L)
    return offsets, mask


def one_call(ctx: DecodeContext, seq: list[int], cache: KVCache, tree: DraftTree, la: torch.Tensor
             ) -> tuple[list[int], torch.Tensor]:
    """[pending tail, draft nodes, LA blocks] -> (accepted drafts + one more token, the logits of
    the lookahead block after the last accepted token: the next drafts). With no drafts (the
    first call) this is a drafting call whose exact token comes from the tail's last row."""
    start, m, L = cache.length, len(tree.tokens), la.shape[1]
    n_tail = len(seq) - start
    offsets, mask = one_call_layout(n_tail, tree, L)
    logits = verify_tree(ctx.target_runner, cache, seq, tree.tokens, tree.parents,
                         extra=(la.expand(1, -1, -1).repeat(1, m + 1, 1), offsets, mask))
    stats: PaSSStats = ctx.stats.method_stats
    if ctx.sampling.greedy:
        path, z = accept.greedy_walk(tree.tokens, tree.parents, logits[n_tail - 1: n_tail + m].argmax(-1).tolist())
    elif tree.draws:  # several guesses for one position
        token, law = accept.recursive_rejection(tree.draws, tree.q[0], warp(logits[n_tail - 1], ctx.sampling),
                                                ctx.generator)
        path = [] if token is None else [tree.tokens.index(token)]
        if path:
            law = warp(logits[n_tail + path[0]], ctx.sampling)
        z = int(sample(law, ctx.generator))
    else:  # a chain, judged by the speculative rule
        p = warp(logits[n_tail - 1: n_tail + m], ctx.sampling)
        accepted, z = accept.speculative(tree.tokens, tree.q, p, ctx.generator)
        path = list(range(accepted))
    if m:
        ctx.stats.record_round(max(tree.depths()), len(path), nodes=m)
        if ctx.sampling.greedy and ctx.options.guesses > 1:
            # Nodes past the guesses and their chain are prompt-lookup drafts (`lookup`).
            rank = "none" if not path else str(path[0] + 1) if path[0] < ctx.options.guesses else "lookup"
            stats.guess_taken[rank] = stats.guess_taken.get(rank, 0) + 1
    # Keep the accepted path's K/V after the tail; z is pending; other nodes and every LA row go.
    cache.keep_positions(start + n_tail, torch.tensor(path, dtype=torch.long))
    block = n_tail + m + (1 + path[-1] if path else 0) * L
    return [tree.tokens[k] for k in path] + [z], logits[block: block + L]


def decode_one_call(ctx: DecodeContext, la: torch.Tensor) -> Iterator[list[int]]:
    seq = list(ctx.prompt_ids)
    k, n_lookup = ctx.options.guesses, ctx.options.lookups if ctx.sampling.greedy else 0
    lookup = PromptLookupDrafter(ctx, num_draft=n_lookup) if n_lookup else None
    cache = ctx.new_cache(ctx.target, slack=64 + (la.shape[1] + 1) * (la.shape[1] + k + n_lookup + 1))
    block_logits = None  # the first call has no drafts: it is a drafting call
    stats: PaSSStats = ctx.stats.method_stats
    while (room := ctx.room(seq)) > 0:
        # Never draft past max_new_tokens or the context: accepted drafts + z <= room.
        tree = DraftTree([], []) if block_logits is None else drafts.tree(block_logits, ctx, room - 1, k)
        copied: list[int] = []
        if lookup is not None and block_logits is not None:
            # Greedy only: any tree keeps greedy_walk exact, so text copied from earlier in the
            # sequence joins the tree as one more branch (merged where it repeats a guess).
            copied = lookup.propose(seq, lookup.max_drafts(room)).tokens
            added = drafts.add_path(tree, copied)
            stats.lookup_proposed += added
        if not tree.tokens:  # the first call, and the last when one token is left
            stats.drafting_calls += 1
        block, block_logits = one_call(ctx, seq, cache, tree, la)
        if copied:
            kept = next((i for i, (a, b) in enumerate(zip(block, copied)) if a != b), min(len(block), len(copied)))
            kept = min(kept, len(block) - 1)  # z, the last token, is the target's own, not a draft
            stats.lookup_accepted += kept
            lookup.commit(seq, len(seq) + kept)
        seq.extend(block)
        yield block


def decode(ctx: DecodeContext) -> Iterator[list[int]]:
    """PaSS keeps its own loops: its drafts come out of the target's own calls, and how those
    calls are arranged (the scheme) is the method; verification and acceptance are shared."""
    opts, stats = ctx.options, PaSSStats()
    ctx.stats.method_stats = stats
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
                block = [decode_one_token(ctx, seq, cache)]
                seq.extend(block)
                yield block
                continue
            # Never draft past max_new_tokens or the context: y + n drafts + z <= room.
            y, chain, q = drafting_call(ctx, seq, cache, la[:, : min(opts.lookahead, room - 2)])
            stats.drafting_calls += 1
            seq.append(y)
            yield [y]  # exact already: stream it before validating the drafts
            room -= 1
        else:
            chain, q = carried
            stats.drafting_skipped += 1
        # Merged: lookahead rows for the round after this one, only as many as it may use.
        n_next = min(opts.lookahead, room - len(chain) - 2) if opts.scheme == "merged" else 0
        block, carried = validation_call(ctx, seq, cache, chain, q, la[:, :n_next] if n_next > 0 else None)
        seq.extend(block)
        yield block
