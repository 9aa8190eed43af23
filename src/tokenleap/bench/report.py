"""Turning per-prompt records into the summary, the markdown report and run comparisons."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..decoding.quality import uniformity_pvalue
from ..errors import TokenleapError
from ..markdown import fmt as _fmt
from ..markdown import table as _table

BASELINE = "ar"

PPL_NOTE = ("ppl: per sample, exp(-mean log-prob of its generated tokens, EOS included) under the target "
            "at T=1 without top-k/top-p, given the prompt and earlier tokens; the table shows the "
            "arithmetic mean of these per-sample perplexities (sampling runs only).")

LAW_NOTE = ("law p (sampling runs): Kolmogorov-Smirnov p-value that the generated tokens follow the target's "
            "warped law token by token (randomised PIT, most likely token first, see "
            "`tokenleap.decoding.quality.law_pit`). Lossless methods (`ar`, `sps`, `pass`) should not "
            "get a tiny one; MTAD is not lossless and favours likely tokens, so it can. A few tokens "
            "outside the scorer's top-k/top-p (bf16 round-off between decoding and scoring) are left out.")

# ---- summary ---------------------------------------------------------------------------------

def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _sum_lists(lists: list[list[int]]) -> list[int]:
    out = [0] * max((len(x) for x in lists), default=0)
    for x in lists:
        for i, v in enumerate(x):
            out[i] += v
    return out


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Metrics of one method over some records: totals first, ratios of totals after, so long
    generations weigh more than short ones (tokens/s = all tokens / all wall time)."""
    ok = [r for r in records if r["error"] is None]
    stats = [r["stats"] for r in ok]
    tokens = sum(r["tokens"] for r in ok)
    wall = sum(r["wall_s"] for r in ok)
    target_fw = sum(s["target_forwards"] for s in stats)
    accepted = sum(s["accepted"] for s in stats)
    proposed = sum(s["proposed"] for s in stats)
    proposed_at = _sum_lists([s["proposed_at"] for s in stats])
    accepted_at = _sum_lists([s["accepted_at"] for s in stats])
    ppls = [r["ppl"] for r in ok if r.get("ppl") is not None]
    pits = [math.nan if u is None else u for r in ok for u in (r.get("pit") or [])]
    law_p, law_nan = uniformity_pvalue(pits) if pits else (None, None)
    agreed = [(r["agreement"] * r["agreement_n"], r["agreement_n"]) for r in ok if r.get("agreement") is not None]
    return {
        "runs": len(records), "failed": len(records) - len(ok), "tokens": tokens, "wall_s": wall,
        "tokens_per_s": _ratio(tokens, wall) or 0.0,
        "mean_accepted_length": 1.0 + accepted / target_fw if target_fw else 1.0,
        "acceptance_rate": _ratio(accepted, proposed),
        "acceptance_by_position": [a / p if p else 0.0 for a, p in zip(accepted_at, proposed_at)],
        "target_forwards_per_token": _ratio(target_fw, tokens),
        "draft_forwards_per_token": _ratio(sum(s["draft_forwards"] for s in stats), tokens),
        "ppl": sum(ppls) / len(ppls) if ppls else None,
        # Law check (sampling runs): KS p-value of the tokens' PIT under the target's warped law;
        # a lossless method should not get a tiny one. law_nan: tokens outside the law's support.
        "law_pvalue": law_p, "law_nan": law_nan,
        # Quantized weights: teacher-forced top-1 agreement with the unquantized model on its
        # greedy answers, over all their positions (None for unquantized columns).
        "agreement": _ratio(sum(a for a, _ in agreed), sum(n for _, n in agreed)) if agreed else None,
        "energy_j_per_token": _ratio(sum(r["energy_j"] for r in ok), tokens),
        # The cost model's time per token for these runs (`DecodeStats.predicted_ms`), when every
        # run has one (anchors have none).
        "predicted_ms_per_token": (_ratio(sum(s["predicted_ms"] for s in stats), tokens)
                                   if stats and all(s.get("predicted_ms") for s in stats) else None),
    }


def exact_match(records: list[dict[str, Any]], baseline: list[dict[str, Any]]) -> float | None:
    """Fraction of (prompt, repeat) pairs whose token ids equal the baseline's; pairs where
    either side failed are left out."""
    reference = {(r["prompt_index"], r["repeat"]): r["token_ids"] for r in baseline if r["error"] is None}
    pairs = [(r["token_ids"], reference[key]) for r in records
             if r["error"] is None and (key := (r["prompt_index"], r["repeat"])) in reference]
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else None


def _method_metrics(records: list[dict[str, Any]], baseline: list[dict[str, Any]] | None,
                    greedy: bool, same_weights: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Metrics of one method; speedup against `baseline` (`ar`), exact match against greedy
    decoding of the same weights (`same_weights`: `ar`, or `ar@quant=int8` for a column on int8
    weights; None when the run has no such column)."""
    metrics = aggregate(records)
    base = aggregate(baseline) if baseline else None
    metrics["speedup"] = _ratio(metrics["tokens_per_s"], base["tokens_per_s"]) if base else None
    base_ms, mine_ms = base and base["predicted_ms_per_token"], metrics["predicted_ms_per_token"]
    metrics["predicted_speedup"] = _ratio(base_ms, mine_ms) if base_ms and mine_ms else None
    metrics["exact_match"] = exact_match(records, same_weights) if greedy and same_weights else None
    return metrics


def _same_weights(methods: list[dict[str, Any]], name: str) -> str | None:
    """The `ar` column that decodes greedily with the weights `name` runs on (None: none in the run)."""
    quant = {m["name"]: m.get("quant") for m in methods}
    if any(m["name"] == name and m["base"] == "llamacpp" for m in methods):
        return None  # the GGUF's own weights
    if not quant.get(name):
        return BASELINE
    return next((m["name"] for m in methods if m["base"] == BASELINE and m.get("quant") == quant[name]
                 and m["name"] != name), None)


def paired_ratios(records: list[dict[str, Any]], method: str, reference: str, draws: int = 2000,
                  seed: int = 0) -> dict[str, Any] | None:
    """tok/s and ppl of `method` over `reference` on the prompts both ran, each with a 95%
    bootstrap interval that resamples prompts (a prompt's two records move together, so the
    spread is the prompts' and the sampling's, not the gap between prompt sets)."""
    def by_key(name: str) -> dict:
        return {(r["prompt_index"], r["repeat"]): r for r in records if r["method"] == name and r["error"] is None}

    mine, ref = by_key(method), by_key(reference)
    keys = sorted(mine.keys() & ref.keys())
    if len(keys) < 2:
        return None
    cols = {f"{side}_{field}": np.array([float(d[k][field] or 0.0) for k in keys])
            for side, d in (("a", mine), ("b", ref)) for field in ("tokens", "wall_s")}
    has_ppl = all(mine[k].get("ppl") is not None and ref[k].get("ppl") is not None for k in keys)
    if has_ppl:
        cols["a_ppl"] = np.array([mine[k]["ppl"] for k in keys])
        cols["b_ppl"] = np.array([ref[k]["ppl"] for k in keys])

    def ratios(idx: np.ndarray) -> tuple[float, float]:
        c = {name: v[idx] for name, v in cols.items()}
        speed = (c["a_tokens"].sum(-1) / c["a_wall_s"].sum(-1)) / (c["b_tokens"].sum(-1) / c["b_wall_s"].sum(-1))
        ppl = c["a_ppl"].mean(-1) / c["b_ppl"].mean(-1) if has_ppl else np.full_like(speed, np.nan)
        return speed, ppl

    speed, ppl = ratios(np.arange(len(keys)))
    boot = np.random.default_rng(seed).integers(0, len(keys), size=(draws, len(keys)))
    speed_b, ppl_b = ratios(boot)
    out = {"reference": reference, "prompts": len(keys), "speed_ratio": float(speed),
           "speed_ci95": [float(x) for x in np.percentile(speed_b, [2.5, 97.5])]}
    if has_ppl:
        out.update(ppl_ratio=float(ppl), ppl_ci95=[float(x) for x in np.percentile(ppl_b, [2.5, 97.5])])
    return out


def _references(names: list[str], name: str) -> list[str]:
    """What each method is judged against: `ar`, and `sps` (the draft-model baseline) too."""
    if name == BASELINE:
        return []
    return [ref for ref in (BASELINE, "sps") if ref in names and ref != name]


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The `summary` object: per method, overall and per category."""
    records = results["per_prompt"]
    greedy = results["config"].get("greedy", True)
    names = [m["name"] for m in results["methods"]]
    by_method = {n: [r for r in records if r["method"] == n] for n in names}
    baseline = by_method.get(BASELINE)
    categories = list(dict.fromkeys(r["category"] for r in records))
    summary = {}
    for name in names:
        mine = by_method[name]
        same = by_method.get(_same_weights(results["methods"], name) or "")

        def in_category(rs: list[dict[str, Any]] | None, c: str) -> list[dict[str, Any]] | None:
            return None if rs is None else [r for r in rs if r["category"] == c]

        entry = _method_metrics(mine, baseline, greedy, same)
        entry["energy_source"] = results["config"].get("energy_source")
        entry["per_category"] = {c: _method_metrics(in_category(mine, c), in_category(baseline, c), greedy,
                                                    in_category(same, c)) for c in categories}
        entry["versus"] = [v for ref in _references(names, name)
                           if (v := paired_ratios(records, name, ref)) is not None]
        summary[name] = entry
    return summary


# ---- markdown ---------------------------------------------------------------------------------

def _metric_cells(m: dict[str, Any]) -> list[str]:
    return [_fmt(m["tokens_per_s"], 1), _fmt(m["speedup"]), _fmt(m["mean_accepted_length"]),
            _fmt(m["acceptance_rate"]), _fmt(m["target_forwards_per_token"]), _fmt(m["draft_forwards_per_token"]),
            _fmt(m["exact_match"]), _fmt(m.get("agreement"), 3), _fmt(m["ppl"]), _pvalue(m.get("law_pvalue")),
            _fmt(m["energy_j_per_token"], 3), str(m["failed"])]


def _pvalue(p: float | None) -> str:
    return "–" if p is None else f"{p:.2g}" if p >= 1e-4 else "<1e-4"


METRIC_HEADER = ["tok/s", "speedup", "mean acc. len", "acc. rate", "target fw/tok", "draft fw/tok",
                 "exact match", "agreement", "ppl", "law p", "J/tok", "failed"]


def _runtime_line(cfg: dict[str, Any]) -> list[str]:
    """Where the target ran and which of the machine's features it used (runs since the
    hardware-adaptive runtime; older runs have no such record)."""
    rt = cfg.get("runtime")
    if not rt:
        return []
    cpu = rt.get("cpu", {})
    return [f"- runtime: {rt['device']}, {rt['dtype']} (asked: {rt.get('dtype_asked', 'auto')}), kernels "
            f"{rt['kernels']}; CPU isa {cpu.get('isa', '?')}, native bf16 {'yes' if cpu.get('native_bf16') else 'no'}"
            + (" (forced off)" if cpu.get("forced_fallback") else "")]


def markdown_report(results: dict[str, Any], plots: list[Path] | None = None) -> str:
    cfg, summary = results["config"], results["summary"]
    lines = ["# tokenleap benchmark", "",
             f"- status: {results['status']}", f"- command: `{cfg['command_line']}`",
             f"- model: {cfg['model']}" + (f", draft: {cfg['draft']}" if cfg.get("draft") else ""),
             f"- dtype {cfg['dtype']}, {cfg['threads']} threads, max_new_tokens {cfg['max_new_tokens']}, "
             f"sampling {cfg['sampling']}, repeats {cfg['repeats']}, seed {cfg['seed']}",
             f"- torch {cfg['torch']}, transformers {cfg['transformers']}, {cfg['date']}, "
             f"{cfg['machine']['cpu']} ({cfg['machine']['cpu_count']} CPUs)",
             *_runtime_line(cfg), f"- energy: {cfg['energy_source']}", *_forward_cost_line(cfg), "", "## Overall", ""]
    lines += _table(["method"] + METRIC_HEADER, [[n] + _metric_cells(m) for n, m in summary.items()])
    lines += _versus_section(summary)
    lines += ["", "## Per category", ""]
    rows = [[c, n] + _metric_cells(m["per_category"][c])
            for c in _categories(summary) for n, m in summary.items()]
    lines += _table(["category", "method"] + METRIC_HEADER, rows)
    lines += ["", "## Acceptance by draft position", ""]
    accept = {n: m["acceptance_by_position"] for n, m in summary.items() if m["acceptance_by_position"]}
    if accept:
        width = max(len(v) for v in accept.values())
        lines += _table(["method"] + [str(i + 1) for i in range(width)],
                        [[n] + [_fmt(x) for x in v] + [""] * (width - len(v)) for n, v in accept.items()])
    else:
        lines.append("No method proposed drafts.")
    lines += _predicted_section(summary)
    lines += _method_sections(results)
    lines += ["", "## Notes", "", *_notes(results)]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _predicted_section(summary: dict[str, Any]) -> list[str]:
    """The cost model's speedup beside the measured one, for every method it can price."""
    rows = [[n, _fmt(m["predicted_speedup"]), _fmt(m["speedup"]), f"{100 * (m['speedup'] / m['predicted_speedup'] - 1):+.0f}%"]
            for n, m in summary.items() if m.get("predicted_speedup") and m["speedup"]]
    if not rows:
        return []
    return ["", "## Cost model: predicted vs measured", "",
            "Predicted: the run's forwards priced on this machine's measured step-cost curves (rows -> ms; "
            "PPD: its schedule on the one-thread cost), against `ar`'s priced the same way; measured: tok/s "
            "against `ar`. The gap is work outside the forwards (acceptance, cache moves, Python).", "",
            *_table(["method", "predicted speedup", "measured speedup", "measured vs predicted"], rows)]


def _versus_section(summary: dict[str, Any]) -> list[str]:
    rows = [[n, f"`{v['reference']}`", str(v["prompts"]), _interval(v["speed_ratio"], v["speed_ci95"]),
             _interval(v.get("ppl_ratio"), v.get("ppl_ci95"))]
            for n, m in summary.items() for v in m.get("versus", [])]
    if not rows:
        return []
    return ["", "## Paired against the baselines", "",
            "Ratios on the same prompts; [95% interval] from 2,000 bootstrap resamples of the prompts.", "",
            *_table(["method", "against", "prompts", "tok/s ratio", "ppl ratio"], rows)]


def _interval(value: float | None, ci: list[float] | None) -> str:
    return "–" if value is None else f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _method_sections(results: dict[str, Any]) -> list[str]:
    """Each method's own figures, as the method itself reports them (`MethodStats.report`),
    over every run of that method that kept them."""
    from ..methods import METHODS

    groups: dict[type, dict[str, list[dict]]] = {}
    for r in results["per_prompt"]:
        spec = METHODS.get(r["method"].partition("@")[0]) if not r["error"] else None  # a variant: its method
        if spec is not None and spec.stats is not None and r["stats"].get("method_stats"):
            groups.setdefault(spec.stats, {}).setdefault(r["method"], []).append(r)
    return [line for kind, runs in groups.items() for line in kind.report(runs, results)]


def _categories(summary: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(c for m in summary.values() for c in m["per_category"]))


def _forward_cost_line(cfg: dict[str, Any]) -> list[str]:
    cost = cfg.get("forward_cost")  # absent in results written before it was measured
    if not cost:
        return []
    line = f"- one decoding forward (256 cached tokens, median): target {cost['target_ms']:.2f} ms"
    if "draft_ms" in cost:
        line += f", draft {cost['draft_ms']:.2f} ms ({100 * cost['draft_ratio']:.0f}% of the target)"
    return [line]


def _llamacpp_notes(results: dict[str, Any]) -> list[str]:
    """The llama.cpp anchor: why it was not measured, or the fastest method beside it."""
    skipped = results["config"].get("not_measured") or {}
    notes = [f"- {name}: not measured: {why}" for name, why in skipped.items()]
    summary = results["summary"]
    if "llamacpp" in summary and summary["llamacpp"]["tokens_per_s"]:
        ours = {n: m for n, m in summary.items() if n != "llamacpp" and not n.startswith("hf")}
        llama_tok_s = summary["llamacpp"]["tokens_per_s"]
        weights = next((r["stats"]["dtype"] for r in results["per_prompt"]
                        if r["method"] == "llamacpp" and r["stats"]), "gguf")
        notes.append(f"- llamacpp: llama.cpp on the GGUF file the model came from, with its own weights "
                     f"({weights}), the same prompt ids, sampling, length, EOS and threads: {llama_tok_s:.1f} tok/s.")
        if ours:
            best, row = max(ours.items(), key=lambda kv: kv[1]["tokens_per_s"] or 0.0)
            notes.append(f"- fastest tokenleap method: {best} at {row['tokens_per_s']:.1f} tok/s = "
                         f"{row['tokens_per_s'] / llama_tok_s:.2f}x llamacpp.")
    return notes


def _notes(results: dict[str, Any]) -> list[str]:
    cfg = results["config"]
    notes = ["- tok/s = all generated tokens / all wall time (EOS included; counted as token ids for "
             "every method); speedup is against `ar` in the same run and category.",
             "- mean acc. len = 1 + accepted drafts / target forwards. For hf-assisted and hf-pld, accepted drafts are "
             "derived as tokens - target forwards (HF does not report proposals, so no acceptance rate).",
             f"- {PPL_NOTE}",
             f"- {LAW_NOTE}",
             "- exact match (greedy runs): fraction of prompts whose token ids equal those of `ar` on the same "
             "weights (`ar@quant=int8` for a column on int8 weights; none when the run has no such column)."]
    if cfg.get("greedy") and BASELINE in results["summary"]:
        lossless = {m["name"] for m in results["methods"] if m["lossless"]}
        off = [n for n, m in results["summary"].items()
               if n in lossless and m["exact_match"] is not None and m["exact_match"] < 1.0]
        notes.append("- lossless check: " + (f"outputs differ from `ar` for {', '.join(off)} (in bf16, "
                                            "round-off between batched and single-token forwards can flip "
                                            "near-tied argmaxes)" if off else "every lossless method matched `ar`."))
    notes += _llamacpp_notes(results)
    failed = [r for r in results["per_prompt"] if r["error"]]
    for r in failed[:10]:
        notes.append(f"- failed: {r['method']} on {r['category']}/{r['question_id']}: {r['error']}")
    if len(failed) > 10:
        notes.append(f"- ... and {len(failed) - 10} more failures (see results.json)")
    return notes


# ---- comparing runs -----------------------------------------------------------------------------

def save_results(results: dict[str, Any], path: Path) -> Path:
    """Write results.json atomically: indented, but one line per per-prompt record (a run has
    thousands, each with its token ids and PIT values), which keeps the file small and diffable."""
    records = results.get("per_prompt", [])
    text = json.dumps({**results, "per_prompt": []}, indent=1)
    body = ",\n".join("  " + json.dumps(r) for r in records)
    text = text.replace('"per_prompt": []', '"per_prompt": [\n' + body + "\n ]" if records else '"per_prompt": []', 1)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def load_results(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise TokenleapError(f"results file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TokenleapError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(results, dict) or not isinstance(results.get("summary"), dict):
        raise TokenleapError(f"{path} is not a tokenleap bench results file (no summary)")
    return results


def _change(a: float | None, b: float | None, digits: int = 2, relative: bool = False) -> str:
    if a is None or b is None:
        return f"{_fmt(a, digits)} → {_fmt(b, digits)}"
    delta = f"{(b - a) / a * 100:+.1f}%" if relative and a else f"{b - a:+.{digits}f}"
    return f"{a:.{digits}f} → {b:.{digits}f} ({delta})"


def compare(a: dict[str, Any], b: dict[str, Any], a_name: str = "A", b_name: str = "B") -> str:
    """A markdown table of per-method changes from run A to run B."""
    names = list(dict.fromkeys([*a["summary"], *b["summary"]]))
    rows = []
    for n in names:
        ma, mb = a["summary"].get(n, {}), b["summary"].get(n, {})
        rows.append([n] + [_change(ma.get(k), mb.get(k), d, rel) for k, d, rel in
                           (("tokens_per_s", 1, True), ("speedup", 2, False), ("mean_accepted_length", 2, False),
                            ("acceptance_rate", 2, False), ("ppl", 2, False))])
    lines = [f"A = {a_name}", f"B = {b_name}", ""]
    lines += _table(["method", "tok/s", "speedup", "mean acc. len", "acc. rate", "ppl"], rows)
    differing = [k for k in ("model", "draft", "dtype", "threads", "max_new_tokens", "sampling", "machine")
                 if a.get("config", {}).get(k) != b.get("config", {}).get(k)]
    if differing:
        lines += ["", f"note: the runs differ in {', '.join(differing)}; tokens/s compare only within like runs."]
    return "\n".join(lines)
