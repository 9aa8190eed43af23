"""PPD's per-layer work on either runner: the main stream's layers on the committed cache, a
branch's layers on scratch rows, and promoting a branch row into the committed cache.

- `LeanLayers` (the lean runner): the committed cache is a StaticKVCache like `ar`'s, the k
  scratch rows a second one whose layer m gets the committed prefix copied lazily, right before
  the branch runs layer m. Its slots are always written before they are read, so it is left
  uninitialised: while branch=auto takes plain steps its memory is never touched (zeroing it
  cost ~50 ms a generation here, in page faults).
- `HFLayers` (any family on the HF runner): the committed cache is an HFCache, the scratch
  rows a second one with k batch rows whose layer m is set to the committed prefix right before
  the branch runs layer m. Layers run through the model's own decoder (`models.layered`).

Both run a branch as an ordinary batched decoding step over the candidates (one row each, at
the same position), so a promoted row is what a plain step computes. `LayerProgress` is how
far the main stream has got, which a branch that catches up with it waits on.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

from ..decoding.cache import StaticKVCache
from ..decoding.context import DecodeContext
from ..models.hf import HFCache, HFRunner
from ..models.layered import LayerPlan
from ..models.llama import LlamaRunner

class LayerProgress:
    """Layers done by the main stream; a branch at layer m waits until main has done m+1."""

    def __init__(self, done: int) -> None:
        self.done = done
        self._cond = threading.Condition()

    def advance(self, done: int) -> None:
        with self._cond:
            self.done = done
            self._cond.notify_all()

    def wait(self, layers: int) -> None:
        if self.done < layers:  # only when d < l/2: the branch caught up with main
            with self._cond:
                self._cond.wait_for(lambda: self.done >= layers)


Before = Callable[[int], None]  # before layer m (may raise StopForward)
After = Callable[[int, torch.Tensor], None]  # layer m's output


class _Rows:
    """The first rows of a StaticKVCache, as a cache `run_layer` can write and attend to."""

    def __init__(self, cache: StaticKVCache, rows: int) -> None:
        self.keys = [k[:rows] for k in cache.keys]
        self.values = [v[:rows] for v in cache.values]
        self.length = 0


class LeanLayers:
    def __init__(self, ctx: DecodeContext, k: int) -> None:
        self.runner: LlamaRunner = ctx.target.runner
        self.num_layers = self.runner.num_layers
        self.committed: StaticKVCache = ctx.new_cache(ctx.target)
        self._scratch_cache = self.runner.new_cache(k, self.committed.capacity, zeroed=False)
        self._scratch: dict[int, _Rows] = {}  # rows 0..j-1 for j candidates
        self._replicated = [0] * self.num_layers  # per layer: committed positions copied into scratch

    def main(self, ids: torch.Tensor | None, x: torch.Tensor | None, start: int, done: int, after: After
             ) -> torch.Tensor:
        """Layers done..l over the stream (token ids [1, n] when done == 0, else its hidden
        states) at positions start..; returns the last layer's output."""
        runner = self.runner
        x = runner.embed(ids) if x is None else x
        n = x.shape[1]
        cos, sin = runner.rope(torch.arange(start, start + n))
        mask = runner.attention_mask(start, n, None)
        for m in range(done, self.num_layers):
            x = runner.run_layer(m, x, self.committed, start, cos, sin, mask)
            after(m, x)
        return x

    def branch(self, candidates: list[int], pos: int, layers: int, before: Before, after: After) -> None:
        """Layers 0..layers-1 over the candidates, one scratch row each, at position pos."""
        runner, k = self.runner, len(candidates)
        if k not in self._scratch:
            self._scratch[k] = _Rows(self._scratch_cache, k)
        rows = self._scratch[k]
        keys, values = self._scratch_cache.keys, self._scratch_cache.values
        committed_keys, committed_values = self.committed.keys, self.committed.values
        cos, sin = runner.rope(torch.tensor([pos]))
        x = runner.embed(torch.tensor(candidates)[:, None])  # [k, 1, D]
        for m in range(layers):
            before(m)
            start = self._replicated[m]  # bring layer m of the committed prefix into the rows
            keys[m][:, :, start:pos] = committed_keys[m][:, :, start:pos]
            values[m][:, :, start:pos] = committed_values[m][:, :, start:pos]
            self._replicated[m] = pos
            x = runner.run_layer(m, x, rows, pos, cos, sin, None)
            after(m, x)

    def promote(self, row: int, pos: int, layers: int) -> None:
        """Copy scratch row `row`'s K/V at pos, layers 0..layers-1, into the committed row."""
        for m in range(layers):
            self.committed.keys[m][0, :, pos] = self._scratch_cache.keys[m][row, :, pos]
            self.committed.values[m][0, :, pos] = self._scratch_cache.values[m][row, :, pos]

    def commit(self, length: int) -> None:
        self.committed.length = length


class HFLayers:
    def __init__(self, ctx: DecodeContext, k: int) -> None:
        self.runner: HFRunner = ctx.target.runner
        self.stack = self.runner.layer_stack()  # made and checked once per runner
        self.num_layers = self.stack.num_layers
        self.committed: HFCache = self.runner.new_cache()
        self._scratch: HFCache = self.runner.new_cache()

    def _run(self, plan: LayerPlan, ids: torch.Tensor, start: int, cache: HFCache) -> None:
        positions = torch.arange(start, start + ids.shape[1], device=self.runner.device)
        self.stack.run(plan, ids, positions, cache.inner, self.runner.masks(start, positions, None))

    def main(self, ids: torch.Tensor | None, x: torch.Tensor | None, start: int, done: int, after: After
             ) -> torch.Tensor:
        out: list[torch.Tensor] = []

        def keep(m: int, h: torch.Tensor) -> None:
            after(m, h)
            if m == self.num_layers - 1:
                out.append(h)

        if ids is None:  # resuming from hidden states: the ids only shape the call
            ids = torch.zeros(x.shape[:2], dtype=torch.long, device=self.runner.device)
        self._run(LayerPlan(done, self.num_layers, x, after=keep), ids, start, self.committed)
        return out[0]

    def branch(self, candidates: list[int], pos: int, layers: int, before: Before, after: After) -> None:
        committed, scratch = self.committed.inner.layers, self._scratch.inner.layers
        k = len(candidates)

        def replicate(m: int) -> None:
            before(m)  # main has done layer m: its committed prefix is complete
            src, dst = committed[m], scratch[m]
            dst.keys = src.keys[:, :, :pos].expand(k, -1, -1, -1)
            dst.values = src.values[:, :, :pos].expand(k, -1, -1, -1)
            dst.device, dst.is_initialized = src.keys.device, True

        ids = torch.tensor(candidates, device=self.runner.device)[:, None]
        self._run(LayerPlan(0, layers, before=replicate, after=after), ids, pos, self._scratch)

    def promote(self, row: int, pos: int, layers: int) -> None:
        committed, scratch = self.committed.inner.layers, self._scratch.inner.layers
        for m in range(layers):
            committed[m].keys = torch.cat([committed[m].keys[:, :, :pos],
                                           scratch[m].keys[row:row + 1, :, pos:pos + 1]], 2)
            committed[m].values = torch.cat([committed[m].values[:, :, :pos],
                                             scratch[m].values[row:row + 1, :, pos:pos + 1]], 2)

    def commit(self, length: int) -> None:
        """Every layer holds exactly the verified positions already (a layer past a promoted
        row's depth gets position length-1 from the main stream that just ran)."""


def layers_for(ctx: DecodeContext, k: int) -> LeanLayers | HFLayers:
    return LeanLayers(ctx, k) if isinstance(ctx.target.runner, LlamaRunner) else HFLayers(ctx, k)
