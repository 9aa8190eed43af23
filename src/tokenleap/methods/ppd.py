"""PPD — predictive pipelined decoding: exact greedy decoding, made faster with extra compute.

Spec: shared/specs/ppd.md (Yang et al., arXiv 2307.05908). Token x_n goes through the layers
on the *main* stream. After layer d an early-exit head proposes k candidates for x_(n+1), and
a *branch* starts running them (k rows of one computation, at position n+1) through layers
1..l-d on a second worker, while main finishes layers d+1..l. Main then emits x_(n+1) = argmax,
exactly greedy. If x_(n+1) is a candidate, its branch row is promoted: its K/V is copied into
the committed cache and the stream for x_(n+1) starts l-d layers deep; else it starts at layer 1.

Memory (`ppd_layers`: the same layout on both runners, checked exact in fp32 on the HF one).
The committed cache holds verified tokens only, so nothing is ever rolled back. A second cache
holds the branch's k scratch rows: per layer, a replica of the committed prefix (copied
lazily, by the branch worker, just before it needs that layer) and at position n+1 each
candidate's own K/V. A branch step is then an ordinary batched decode step, the very kernels
plain decoding runs, so a promoted row is bit-identical to what `ar` computes, in bf16 too (a
masked tree attention over shared slots rounds differently, and bf16 greedy would drift after
near-ties). Promotion copies the row's K/V at n+1 into the committed cache. The next main
stream writes that cache only, so nobody waits for a dropped branch to finish its layer.

Execution. workers=2: two persistent threads with one intra-op thread each (PyTorch drops the
GIL inside ops, so they really run on two cores); a promoted branch is stopped at a layer
boundary, so main never waits for more than one branch layer. workers=1 runs the same work one
after the other (main, then the whole branch) as the reference. The head runs on the branch
worker, so only the branch pays for it (h in the latency model).

d < l/2 *(reconstructed: "forbid spawning before promotion")*: a branch then runs past layer d,
where it would need to predict from an unverified token; it does not. It keeps its layer-d
state, and once promoted (already deeper than d) it spawns the next branch at once from that
state. The branch waits, layer by layer, for main's K/V of the same layer when it catches up.

Whether to run the branch at all (branch=auto, the default). On two cores each worker has one
intra-op thread: a pipelined token costs its main-stream layers at the one-thread step cost c1
(measured with k-row forwards beside it), a plain step on the caller's thread both cores (c2,
`ar`'s). At match rate p the branch gains when (1 - p (1 - (d+h)/l)) c1 < c2 (the spec's
model, `ppd_latency.pipelined_ms`), each kind of token at its measured over priced time
(`Calibration`; the first tokens are plain and timed: fp32 here a curve of 37 ms, steps of 34).
p is estimated online, and judged by its lower bound (`match_rate_bounds`): a few lucky matches
must not start branches that lose on average. Plain steps look at the exit head's candidates at
layer d (h/l of a step) to count matches: early on each while p's upper bound pays, then every
8th to 32nd. The prompt is never pipelined. Every token is the main stream's argmax: exact.
(workers=1: the branch runs after main, it never pays.) Predicted time: the schedule at c1, c2.

Latency model (`simulate`): unit time per layer, free extra compute, exit head h layer-units on
the branch; `simulate_latency` replays this schedule from the realised matches. For d >= l/2
it equals sum(match ? d+h : l) exactly; for d < l/2 a promoted stream is past its exit, so
consecutive matches alternate between d+h and l-d (the spec's formula assumes nesting).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..decoding.context import DecodeContext
from ..errors import TokenleapError
from ..models.cost import CostModel, interpolate, one_thread_ms
from ..models.early_exit import exit_head
from ..models.hardware import one_intra_op_thread
from ..models.layered import StopForward
from ..options import Options, option
from .ppd_latency import (OBSERVE_EVERY, OBSERVE_MOST, PLAIN_EVERY, PLAIN_FIRST, PRIOR_TOKENS, Calibration,
                          PPDStats, match_rate_bounds, pipelined_ms, simulate_latency)
from .ppd_layers import LayerProgress, layers_for


@dataclass
class PPDOptions(Options):
    exit_layer: int = option(0, "d, the exit layer (1 <= d < l); 0 = the trained heads' default layer, "
                                "else ceil(l/2)", minimum=0)
    candidates: int = option(3, "k, branch rows per token", minimum=1, maximum=32)
    head: str = option("auto", "early-exit head: auto (trained if committed for the model, else shared), "
                               "shared, trained or a path to trained heads")
    workers: int = option(2, "2 = main and branch on two threads; 1 = the same work one after the other",
                          minimum=1, maximum=2)
    branch: str = option("auto", "run the branch: always, or auto = only while the cost model says it pays "
                                 "(else plain steps on every thread, some looking at the exit head's "
                                 "candidates to keep estimating the match rate)",
                         choices=("auto", "always"))
    simulate: bool = option(False, "also report the tick simulator's latency (layer units) beside the measured one "
                                   "(the branch then runs for every token)")
    head_cost: float = option(-1.0, "h for the simulator, in layer units; -1 = from the head's size")

    def check(self) -> None:  # head_cost: -1, or any h >= 0
        if self.head_cost < 0 and self.head_cost != -1:
            raise TokenleapError(f"head_cost must be >= 0 (or -1 = estimate), got {self.head_cost}")
        if not self.head:
            raise TokenleapError("head must be auto, shared, trained or a path to trained heads")


# -- the pipeline --------------------------------------------------------------------------
@dataclass
class _Stream:
    """The main stream: token ids [1, n] at positions start.. (done = 0), or their hidden
    states x after `done` layers (a promoted branch row)."""

    ids: torch.Tensor | None
    start: int
    x: torch.Tensor | None = None
    done: int = 0
    hd: torch.Tensor | None = None  # layer-d state of its last position, when done > d


@dataclass
class _Branch:
    """Candidate rows at position `pos`, their K/V in scratch rows 1..k."""

    pos: int
    progress: LayerProgress
    candidates: list[int] = field(default_factory=list)
    x: torch.Tensor | None = None
    done: int = 0
    hd: torch.Tensor | None = None
    launched: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    ready: threading.Event = field(default_factory=threading.Event)  # candidates are known
    future: Future | None = None


class Pipeline:
    """PPD over one generation: `tokens()` yields greedy tokens; `close()` stops the workers."""

    def __init__(self, ctx: DecodeContext) -> None:
        if not ctx.sampling.greedy:
            raise TokenleapError("ppd is exact greedy decoding: it needs temperature=0")
        self.ctx, self.opts = ctx, (opts := ctx.options)
        self.head = exit_head(ctx.target, opts.head, opts.exit_layer)
        self.layers = layers_for(ctx, opts.candidates)  # the runner's layers, committed and scratch caches
        self.l, self.d, self.k = self.layers.num_layers, self.head.layer, opts.candidates
        self.h = self.head.cost if opts.head_cost < 0 else opts.head_cost
        self.matches: list[bool] = []
        self.observed_at: list[int] = []  # the tokens (0 = the prompt's) whose plain step looked at the head
        self.always = opts.branch == "always" or opts.simulate
        # The costs the auto choice and the prediction use: a one-row step with every thread
        # (a plain step, `ar`) and with one (each worker's), and the curve (prefill, k rows).
        self.curve = CostModel.of(ctx.target).curve
        self.c2 = interpolate(self.curve, 1)
        self.c1 = one_thread_ms(ctx.target, opts.candidates) if opts.workers == 2 else self.c2
        self.unjudged, self.observe_every = 0, OBSERVE_EVERY  # plain steps since a match was judged; when to look
        self.calibration = Calibration(prior_ms=PRIOR_TOKENS * self.c1)  # measured / priced, pipelined tokens
        self.plain_calibration = Calibration(prior_ms=PRIOR_TOKENS * self.c2)  # and plain ones
        self.predicted_ms = 0.0
        self.counts = dict(tokens=0, plain=0, observed=0, branches=0, released=0, layers_main=0, layers_promoted=0,
                           layers_branch=0, branch_layers_max=0)
        self.times = dict(main=0.0, main_head=0.0, branch=0.0, exit_head=0.0, wait=0.0, promote=0.0)
        self._live: list[_Branch] = []  # launched, not yet released
        self._lock = threading.Lock()
        self.two_workers = opts.workers == 2
        self.pools: list[ThreadPoolExecutor] = []  # started with the first pipelined token (~5 ms)

    def _workers(self) -> list[ThreadPoolExecutor]:
        """The two one-thread workers (main, branch); a run of plain steps never starts them."""
        if not self.pools:
            threads = torch.get_num_threads()  # also initialises the caller's own pool first
            self.pools = [ThreadPoolExecutor(1, thread_name_prefix=f"ppd-{name}", initializer=one_intra_op_thread)
                          for name in ("main", "branch")]
            for pool in self.pools:  # (each one's thread set up now)
                pool.submit(lambda: None).result()
            # set_num_threads also sets the default new threads start with: give it back.
            torch.set_num_threads(threads)
        return self.pools

    # -- the two kinds of work -------------------------------------------------------------
    @torch.no_grad()
    def _main(self, s: _Stream, progress: LayerProgress, branch: _Branch | None,
              observed: list[int] | None = None) -> int:
        """Layers done+1..l of the main stream, spawning the branch at layer d (or, a plain step
        given `observed`, only putting the exit head's candidates there); returns the token."""
        t0 = time.perf_counter()
        if branch is not None and s.done >= self.d:
            self._spawn(branch, s.hd if s.done > self.d else s.x[:, -1:])

        def after(m: int, x: torch.Tensor) -> None:
            if branch is not None:  # (nothing waits on a plain step's progress)
                progress.advance(m + 1)
                if m + 1 == self.d:
                    self._spawn(branch, x[:, -1:])
            elif m + 1 == self.d and observed is not None:
                observed.extend(self.head.topk(x[:, -1:], self.k).flatten().tolist())

        x = self.layers.main(s.ids, s.x, s.start, s.done, after)
        t1 = time.perf_counter()
        token = int(self.ctx.target_runner.head(x[:, -1:])[0, -1].argmax())  # counted: a target forward
        self.times["main"] += time.perf_counter() - t0
        self.times["main_head"] += time.perf_counter() - t1
        self.counts["layers_main"] += self.l - s.done
        return token

    def _spawn(self, branch: _Branch, hd: torch.Tensor) -> None:
        branch.launched = True
        with self._lock:
            self._live.append(branch)
            self.counts["branches"] += 1
        if self.two_workers:
            branch.future = self.pools[1].submit(self._branch, branch, hd)
        else:
            branch.hd = hd  # workers=1: run after main (a branch may need main's layers >= d)

    @torch.no_grad()
    def _branch(self, b: _Branch, hd: torch.Tensor) -> None:
        """Exit head on hd, then candidate rows through layers 1..l-d until stopped."""
        t0 = time.perf_counter()

        def before(m: int) -> None:
            if b.stop.is_set():
                raise StopForward
            b.progress.wait(m + 1)  # main's K/V of layer m at the positions before b.pos

        def after(m: int, x: torch.Tensor) -> None:
            b.x, b.done = x, m + 1
            if b.done == self.d:
                b.hd = x  # for the late spawn once promoted (d < l/2)

        try:
            b.candidates = self.head.topk(hd, self.k).flatten().tolist()
            self.times["exit_head"] += time.perf_counter() - t0
            b.ready.set()
            self.layers.branch(b.candidates, b.pos, self.l - self.d, before, after)
        except StopForward:
            pass
        finally:
            b.ready.set()
            with self._lock:
                self.times["branch"] += time.perf_counter() - t0
                self.counts["layers_branch"] += b.done
                self.counts["branch_layers_max"] = max(self.counts["branch_layers_max"], b.done)

    def _promote(self, b: _Branch, row: int) -> _Stream | None:
        """Copy the matching row's K/V at b.pos into the committed cache; it is the next main stream."""
        if b.done == 0:  # stopped before its first layer: the token starts afresh
            return None
        t0 = time.perf_counter()
        self.layers.promote(row, b.pos, b.done)
        self.counts["layers_promoted"] += b.done
        self.times["promote"] += time.perf_counter() - t0
        hd = b.hd[row:row + 1] if b.done > self.d else None
        return _Stream(None, b.pos, b.x[row:row + 1], b.done, hd)

    def _release(self, b: _Branch) -> None:
        """The branch's scratch rows are free again (its job has ended)."""
        if b.future is not None:
            b.future.result()  # re-raise what went wrong on the worker
        with self._lock:
            self._live.remove(b)
            self.counts["released"] += 1

    # -- the loop --------------------------------------------------------------------------
    def _pipelined(self, stream: _Stream, emitted: int) -> bool:
        """Run this token's branch? Always with branch=always; else (module docstring) not for the prompt
        nor as a timed plain step (the first PLAIN_FIRST, one in PLAIN_EVERY), then while it pays."""
        if self.always:
            return True
        if (stream.ids is not None and stream.ids.shape[1] > 1) or emitted <= PLAIN_FIRST or not emitted % PLAIN_EVERY:
            return False
        return self._pays(at_most=False)

    def _observing(self, stream: _Stream) -> bool:
        """Look at the exit head's candidates in this plain step (~h/l of a step)? Where the branch
        could pay at all (at p = 1) and the stream passes layer d: each step while the first
        OBSERVE_EVERY matches are judged and p's upper bound pays; else after observe_every plain
        steps, which doubles (up to OBSERVE_MOST) each time a look leaves the upper bound short."""
        if self.always or stream.done >= self.d or self._branch_ms(1.0) >= self.c2:
            return False
        return self.unjudged + 1 >= self.observe_every or (len(self.matches) < OBSERVE_EVERY
                                                           and self._pays(at_most=True))

    def _judged(self, match: bool) -> None:
        self.matches.append(match)
        self.unjudged = 0
        self.observe_every = OBSERVE_EVERY if self._pays(at_most=True) else min(2 * self.observe_every, OBSERVE_MOST)

    def _pays(self, at_most: bool) -> bool:
        """Does a pipelined token beat a plain step (each at its measured/priced ratio) at the match
        rate's lower bound, or at its upper one?"""
        p = match_rate_bounds(sum(self.matches), len(self.matches))[at_most]
        plain = self.plain_calibration.ratio()
        return self._branch_ms(p) * self.calibration.ratio(prior=plain) < self.c2 * plain

    def _branch_ms(self, p: float) -> float:
        """A pipelined token's expected time at match rate p: its main stream (the spec's model);
        with workers=1 also the branch's l-d layers over k rows, run after it."""
        main = pipelined_ms(p, self.c1, self.d, self.h, self.l)
        return main if self.two_workers else main + (self.l - self.d) / self.l * interpolate(self.curve, self.k)

    def _price(self, s: _Stream, pipelined: bool) -> float:
        """This token's main stream as the cost model prices it: its layers at c1 pipelined (c2
        plain), a whole prompt at the curve's cost for its rows; added to the predicted time."""
        rows = s.ids.shape[1] if s.ids is not None else 1
        step = interpolate(self.curve, rows) * (self.c1 / self.c2 if pipelined else 1.0)
        ms = step * (self.l - s.done) / self.l
        self.predicted_ms += ms
        return ms

    def tokens(self) -> Iterator[int]:
        ctx = self.ctx
        seq = list(ctx.prompt_ids)
        stream = _Stream(torch.tensor([seq]), start=0)
        while ctx.room(seq) > 0:
            pos = len(seq)  # the position of the token this stream emits
            progress = LayerProgress(stream.done)
            pipelined = ctx.room(seq) > 1 and self._pipelined(stream, len(seq) - len(ctx.prompt_ids))
            branch = _Branch(pos, progress) if pipelined else None
            priced, started = self._price(stream, pipelined and self.two_workers), time.perf_counter()
            if branch is None:  # a plain step, on the caller's thread with all its threads
                observed = [] if self._observing(stream) else None
                token = self._main(stream, progress, None, observed)
                self.unjudged += 1  # (a look resets it)
                if observed:  # would a branch have matched? (what p is estimated from)
                    self._judged(token in observed)
                    self.counts["observed"] += 1
                    self.observed_at.append(len(seq) - len(ctx.prompt_ids))
                self.counts["plain"] += 1
            elif self.two_workers:
                token = self._workers()[0].submit(self._main, stream, progress, branch).result()
            else:  # workers=1: the branch after main, on the same threads
                token = self._main(stream, progress, branch)
                hd, branch.hd = branch.hd, None
                self._branch(branch, hd)
            self.layers.commit(pos)  # every position before `pos` is now verified and in the cache
            self.counts["tokens"] += 1
            stream = None
            if branch is not None:
                t0 = time.perf_counter()
                branch.ready.wait()
                match = token in branch.candidates
                branch.stop.set()  # promoted: stop at the next layer boundary; else dropped
                if match:
                    if branch.future is not None:
                        branch.future.result()
                    stream = self._promote(branch, branch.candidates.index(token))
                self.times["wait"] += time.perf_counter() - t0
                self._judged(match)
                self._reap(wait=match)
            if stream is None:
                stream = _Stream(torch.tensor([[token]]), start=pos)
            if len(seq) > len(ctx.prompt_ids):  # (the prompt's forward: not a step)
                measured = self.calibration if branch is not None else self.plain_calibration
                measured.add(1e3 * (time.perf_counter() - started), priced)
            seq.append(token)
            yield token

    def _reap(self, wait: bool = False) -> None:
        for b in list(self._live):
            if b.future is None or b.future.done() or wait:
                self._release(b)

    def close(self) -> None:
        """Stop and join the workers (also after an early stop), release every scratch slot, report."""
        for b in list(self._live):
            b.stop.set()
            b.progress.advance(self.l)  # a branch waiting on a main stream that failed must not hang
        self._reap(wait=True)
        while self.pools:
            self.pools.pop().shutdown(wait=True)
        self.report()

    # -- statistics ------------------------------------------------------------------------
    def report(self) -> None:
        c, t = self.counts, self.times
        # target_forwards (one main stream per token, ending in the LM head) are counted by the
        # runner as they run; branches are partial target passes, not draft forwards: PPDStats.
        self.ctx.stats.iterations = c["tokens"]
        matches = sum(self.matches)
        layer_s = (t["main"] - t["main_head"]) / c["layers_main"] if c["layers_main"] else 0.0
        stats = PPDStats(
            exit_layer=self.d, layers=self.l, candidates=self.k, head_trained=self.head.kind == "trained",
            head_cost=self.h, workers=self.opts.workers, branches=c["branches"], matches=matches,
            judged=len(self.matches), match_rate=matches / len(self.matches) if self.matches else 0.0,
            promoted_layers_mean=c["layers_promoted"] / matches if matches else 0.0,
            layers_main=c["layers_main"], layers_promoted=c["layers_promoted"], layers_branch=c["layers_branch"],
            branch_layers_max=c["branch_layers_max"], scratch_live=len(self._live), scratch_released=c["released"],
            main_s=t["main"], branch_s=t["branch"], exit_head_s=t["exit_head"], wait_s=t["wait"],
            promote_s=t["promote"], layer_ms=1e3 * layer_s, plain_steps=c["plain"], observed=c["observed"],
            step_ms=self.c2,
            step_ms_one_thread=self.c1)
        if self.opts.simulate and c["tokens"]:
            stats.sim_units = sum(simulate_latency(self.l, self.d, self.h, self.matches, c["tokens"]))
            stats.model_units = self.l + sum(self.d + self.h if m else self.l for m in self.matches[: c["tokens"] - 1])
            stats.ar_units = float(self.l * c["tokens"])
            stats.sim_speedup = self.l * c["tokens"] / stats.sim_units
            head_s = t["exit_head"] / c["branches"] if c["branches"] else 0.0
            stats.measured_head_cost = head_s / layer_s if layer_s else 0.0
            stats.sim_s = stats.sim_units * layer_s + t["main_head"]
        self.ctx.stats.method_stats = stats
        # workers=1 also runs every branch layer (k rows) after main, on the same threads.
        branch_ms = 0.0 if self.opts.workers == 2 else c["layers_branch"] * interpolate(self.curve, self.k) / self.l
        self.ctx.stats.predicted_ms = self.predicted_ms + branch_ms


def decode(ctx: DecodeContext) -> Iterator[list[int]]:
    pipe = Pipeline(ctx)
    try:
        for token in pipe.tokens():
            yield [token]
    finally:
        pipe.close()
