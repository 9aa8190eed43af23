"""The benchmark harness behind `tokenleap bench`: run methods over Spec-Bench prompts, then
summarise (results.json), report (report.md) and plot (PNG)."""

from .harness import BenchConfig, load_prompts, run_bench
from .report import compare, load_results, markdown_report, summarize

__all__ = ["BenchConfig", "run_bench", "load_prompts", "summarize", "markdown_report", "compare", "load_results"]
