"""PPD's latency model (the spec's, the tick simulator, and the priced one branch=auto chooses
with), and its typed stats record, with the bench report section that puts the model's
prediction beside the measured speedup. (The pipeline itself is `ppd.py`.)"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..decoding.adaptive import EXPLORE_EVERY
from ..decoding.stats import MethodStats
from ..markdown import fmt, table


def simulate_latency(layers: int, d: int, h: float, matches: list[bool], tokens: int) -> list[float]:
    """Latency of each emitted token in layer units under the schedule above: unit-time layers,
    free extra compute, the head costing h on the branch. matches[i]: token i was a candidate."""
    out, head_start = [], 0.0  # layers the current stream has done when it becomes main
    for i in range(tokens):
        out.append(layers - head_start)
        # The branch starts h after the stream passes layer d (or, past it already, at once)
        # and runs while main finishes; it never goes beyond l-d layers.
        ahead = layers - d - h if head_start <= d else layers - head_start - h
        head_start = min(max(ahead, 0.0), layers - d) if i < len(matches) and matches[i] else 0.0
    return out


PRIOR_MATCHES, PRIOR_MISSES = 1.2, 0.8  # branch=auto: a prior match rate of 0.6 worth two branches
PRIOR_TOKENS = 2  # a calibration's prior (measured = predicted) is worth this many tokens
PLAIN_FIRST = 2  # branch=auto: the first tokens after the prompt are plain steps, timed (what ar's cost is here)
PLAIN_EVERY = 16  # ... and one in this many while pipelining, so that a slow start is not believed for ever
OBSERVE_EVERY = EXPLORE_EVERY  # plain steps: one in so many looks at the exit head's candidates at first,
OBSERVE_MOST = 4 * EXPLORE_EVERY  # ... and at least one in so many


def match_rate_bounds(matches: int, judged: int, spread: float = 1.0) -> tuple[float, float]:
    """The match rate's estimate less and plus `spread` standard deviations of its Beta
    posterior (from the prior above). branch=auto pipelines only where the lower bound pays (a
    few lucky matches do not start a branch that, on average, loses), and looks at the exit head
    at every plain step while the upper bound still might (the estimate firms up quickly)."""
    a, b = matches + PRIOR_MATCHES, judged - matches + PRIOR_MISSES
    mean = a / (a + b)
    sd = math.sqrt(mean * (1.0 - mean) / (a + b + 1.0))
    return max(mean - spread * sd, 0.0), min(mean + spread * sd, 1.0)


def pipelined_ms(p: float, c1: float, d: int, h: float, layers: int) -> float:
    """A pipelined token's expected main-stream time at match rate p (the spec's model: a
    matched token's stream starts l-d-h layers deep) with a one-thread step costing c1."""
    return (1.0 - p * (1.0 - (d + h) / layers)) * c1


def break_even_match_rate(c1: float, c2: float, d: int, h: float, layers: int) -> float | None:
    """The match rate above which pipelining beats plain steps costing c2; None if none does."""
    saved = 1.0 - (d + h) / layers
    p = (1.0 - c2 / c1) / saved if saved > 0 else float("inf")
    return max(p, 0.0) if p <= 1.0 else None


@dataclass
class Calibration:
    """Measured over predicted time of one kind of token (pipelined, or plain) so far, from a
    prior ratio worth `prior_ms` of tokens: what the cost model leaves out (promotion copies,
    hand-offs between threads, waits; a curve measured at another context length) learnt
    online. Only when to pipeline depends on it, never which token is emitted: PPD stays exact
    whatever the timing."""

    prior_ms: float
    measured: float = 0.0
    predicted: float = 0.0

    def add(self, measured_ms: float, predicted_ms: float) -> None:
        # A token is believed to within 2x of its price: a slow spell of the machine (another
        # process, a page fault) is not what the cost model leaves out.
        self.measured += min(max(measured_ms, predicted_ms / 2), 2 * predicted_ms)
        self.predicted += predicted_ms

    def ratio(self, prior: float = 1.0) -> float:
        return (self.measured + prior * self.prior_ms) / (self.predicted + self.prior_ms)


def predicted_speedup(p: float, d: int, h: float, layers: int) -> float:
    """The spec's latency model: 1 / (1 - p (1 - (d+h)/l))."""
    return 1.0 / (1.0 - p * (1.0 - (d + h) / layers))




@dataclass
class PPDStats(MethodStats):
    """What one PPD run did, and where its time went (seconds are wall time on each worker)."""

    exit_layer: int = 0  # d
    layers: int = 0  # l
    candidates: int = 0  # k
    head_trained: bool = False
    head_cost: float = 0.0  # h, layer units
    workers: int = 0
    branches: int = 0
    matches: int = 0
    judged: int = 0  # tokens whose branch was judged (matched or not), or whose candidates were observed
    match_rate: float = 0.0
    promoted_layers_mean: float = 0.0
    layers_main: int = 0
    layers_promoted: int = 0
    layers_branch: int = 0
    branch_layers_max: int = 0
    scratch_live: int = 0  # branches not yet released when the run ended (0 after close)
    scratch_released: int = 0
    main_s: float = 0.0
    branch_s: float = 0.0
    exit_head_s: float = 0.0
    wait_s: float = 0.0
    promote_s: float = 0.0
    layer_ms: float = 0.0
    # branch=auto: tokens decoded as plain steps (the branch did not pay), and the costs the
    # choice compared: a one-row step on every thread (c2) and on one (c1, each worker's).
    plain_steps: int = 0
    observed: int = 0  # plain steps that computed the exit head's candidates (p is estimated from them too)
    step_ms: float = 0.0
    step_ms_one_thread: float = 0.0
    # With simulate=True: the tick simulator's latency beside the spec's model, in layer units,
    # and the same schedule with the measured costs (a layer, the exit head, the final head).
    sim_units: float | None = None
    model_units: float | None = None
    ar_units: float | None = None
    sim_speedup: float | None = None
    measured_head_cost: float | None = None
    sim_s: float | None = None

    @classmethod
    def report(cls, runs: dict[str, list[dict[str, Any]]], results: dict[str, Any]) -> list[str]:
        """The latency model's prediction beside the measured speedup, and where the time went
        (the main stream's layer cost against `ar`'s, branch work, waits)."""
        base = results["summary"].get("ar")
        rows, notes = [], []
        for name, recs in runs.items():
            ex = [r["stats"]["method_stats"] for r in recs]
            total = lambda key: sum(e.get(key, 0) for e in ex)  # noqa: E731 (older records lack newer keys)
            tokens, wall = sum(r["tokens"] for r in recs), sum(r["wall_s"] for r in recs)
            layers, d, h = ex[0]["layers"], ex[0]["exit_layer"], ex[0]["head_cost"]
            p = total("matches") / max(1, total("judged"))
            predicted = predicted_speedup(p, d, h, layers)
            main_ms = 1e3 * total("main_s") / max(1, total("layers_main"))
            ar_ms = 1e3 * base["wall_s"] / base["tokens"] / layers if base and base["tokens"] else None
            measured = results["summary"][name]["speedup"]
            rows.append([name, f"{d}", f"{total('plain_steps') / max(1, tokens):.2f}", f"{p:.2f}", f"{predicted:.2f}",
                         fmt(measured), f"{main_ms:.2f}", fmt(ar_ms), f"{total('branch_s'):.1f}", f"{total('exit_head_s'):.2f}",
                         f"{total('wait_s'):.2f}", f"{wall:.1f}"])
            if measured is not None and ar_ms and measured < predicted:
                notes.append(f"- {name}: the model predicts {predicted:.2f}× from the realised match rate {p:.2f}, "
                             f"measured {measured:.2f}×. A main-stream layer took {main_ms:.2f} ms against `ar`'s "
                             f"{ar_ms:.2f} ms, because branch workers share the machine's cores; that alone "
                             f"scales the prediction to {predicted * ar_ms / main_ms:.2f}×. Branch work took "
                             f"{total('branch_s'):.1f} s of {wall:.1f} s wall, the exit head "
                             f"{total('exit_head_s'):.2f} s, waits for branches {total('wait_s'):.2f} s.")
        lines = ["", "## PPD: the spec's latency model vs measured", "",
                 "The spec's model assumes free extra compute; plain steps are tokens decoded without a branch "
                 "(branch=auto: it did not pay). The cost model's prediction, with this machine's one-thread "
                 "cost, is in the predicted-vs-measured table above.", ""]
        lines += table(["method", "d", "plain steps", "match rate", "spec model", "measured", "main ms/layer", "ar ms/layer",
                        "branch s", "exit head s", "wait s", "wall s"], rows)
        return lines + ([""] + notes if notes else [])
