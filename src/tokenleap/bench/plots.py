"""PNG plots of a benchmark run (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

BASELINE = "ar"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on benchmark machines
    import matplotlib.pyplot as plt

    return plt


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Every plot the run has data for; returns the files written."""
    written = []
    for make in (speedup_by_category, acceptance_by_position, tokens_per_s_vs_gamma):
        path = make(results, out)
        if path is not None:
            written.append(path)
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def speedup_by_category(results: dict[str, Any], out: Path) -> Path | None:
    """Grouped bars: one group per category (and overall), one bar per method. Falls back to
    tokens/s when the run has no `ar` baseline to compute speedups against."""
    summary = results["summary"]
    has_baseline = BASELINE in summary
    key, label = ("speedup", f"speedup vs {BASELINE}") if has_baseline else ("tokens_per_s", "tokens/s")
    methods = [n for n in summary if not (has_baseline and n == BASELINE)]
    if not methods:
        return None
    categories = list(dict.fromkeys(c for m in summary.values() for c in m["per_category"]))
    groups = categories + ["overall"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups)), 4))
    width = 0.8 / len(methods)
    for i, name in enumerate(methods):
        values = [summary[name]["per_category"].get(c, {}).get(key) or 0.0 for c in categories]
        values.append(summary[name][key] or 0.0)
        ax.bar([g + (i - (len(methods) - 1) / 2) * width for g in range(len(groups))], values, width, label=name)
    if has_baseline:
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.set_ylabel(label)
    ax.set_title(f"{label} per category")
    ax.legend(fontsize="small")
    return _save(fig, out / "speedup_by_category.png")


def acceptance_by_position(results: dict[str, Any], out: Path) -> Path | None:
    """One line per method that proposed drafts: acceptance rate at draft position 1, 2, ..."""
    curves = {n: m["acceptance_by_position"] for n, m in results["summary"].items() if m["acceptance_by_position"]}
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.set_xlabel("draft position")
    ax.set_ylabel("acceptance rate")
    ax.set_ylim(0, 1.05)
    ax.set_title("acceptance by draft position")
    ax.legend(fontsize="small")
    return _save(fig, out / "acceptance_by_position.png")


def gamma_series(results: dict[str, Any]) -> dict[str, list[tuple[int, float]]]:
    """(gamma, tokens/s) per base method, for methods run at two or more draft lengths."""
    series: dict[str, list[tuple[int, float]]] = {}
    for m in results["methods"]:
        gamma = m["options"].get("gamma")
        if gamma is not None and m["name"] in results["summary"]:
            series.setdefault(m["base"], []).append((gamma, results["summary"][m["name"]]["tokens_per_s"]))
    return {base: sorted(points) for base, points in series.items() if len({g for g, _ in points}) > 1}


def tokens_per_s_vs_gamma(results: dict[str, Any], out: Path) -> Path | None:
    series = gamma_series(results)
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for base, points in series.items():
        ax.plot([g for g, _ in points], [t for _, t in points], marker="o", label=base)
    baseline = results["summary"].get(BASELINE)
    if baseline:
        ax.axhline(baseline["tokens_per_s"], color="grey", linestyle="--", linewidth=0.8, label=BASELINE)
    ax.set_xticks(sorted({g for points in series.values() for g, _ in points}))
    ax.set_xlabel("draft length (gamma)")
    ax.set_ylabel("tokens/s")
    ax.set_title("tokens/s vs draft length")
    ax.legend(fontsize="small")
    return _save(fig, out / "tokens_per_s_vs_gamma.png")
