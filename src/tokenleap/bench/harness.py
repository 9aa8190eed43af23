"""Running a benchmark: prompts in, one record per (prompt, method, repeat) out.

Hygiene follows specs/benchmark.md: one process and one model load for every method, warm-up
first, methods interleaved per prompt (rotating their order, so drifting machine noise hits
all of them alike), the same seed, dtype, thread count and max_new_tokens everywhere, and
generated tokens counted the same way (token ids, cut at the first EOS inclusive).
"""

from __future__ import annotations

import dataclasses
import datetime
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..decoding.quality import score_continuation, top1_agreement
from ..decoding.warping import Sampling
from ..errors import TokenleapError
from ..generation import generate
from ..models.cost import predicted_ms
from ..models.hardware import cpu_caps
from ..models.loading import Model
from ..models.registry import DEFAULT_MODEL
from ..planner import get_model, load_draft, registered_options, require_draft
# The pieces of a run live in their own modules; importers of this one (the bench command,
# scripts/law_check.py, the tests) find them here too.
from .anchors import HF_METHODS, HF_OPTIONS, assistant_settings, count_forwards, cut_at_eos, hf_generate
from . import llamacpp
from .energy import EnergyMeter
from .measure import (PIT_SEED_OFFSET, WARMUP_TOKENS, Recorder, forward_costs, generate_once, machine_info,
                      measure, pit_generator, pit_record, warm_up)
from .prompts import Prompt, encode_prompts, load_prompts
from .variants import (BenchMethod, accepted_options, options_schema, parse_variant, plan_methods,
                       unused_options)

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = ["BenchConfig", "run_bench", "write_outputs", "load_models", "run_config", "progress_bar",
           "HF_METHODS", "HF_OPTIONS", "assistant_settings", "count_forwards", "cut_at_eos", "hf_generate",
           "EnergyMeter", "PIT_SEED_OFFSET", "WARMUP_TOKENS", "Recorder", "forward_costs", "generate_once",
           "machine_info", "measure", "pit_generator", "pit_record", "warm_up", "Prompt", "encode_prompts",
           "load_prompts", "BenchMethod", "accepted_options", "options_schema", "parse_variant", "plan_methods",
           "unused_options"]


@dataclass
class BenchConfig:
    methods: list[str]
    prompts: Path  # Spec-Bench JSONL (the command line's default: ../shared/data/spec_bench_dev.jsonl)
    out: Path = Path("runs/bench")
    model: str = DEFAULT_MODEL
    draft: str | None = None
    limit: int | None = None
    categories: list[str] | None = None
    max_new_tokens: int = 128
    sampling: Sampling = field(default_factory=Sampling)
    dtype: str = "auto"
    device: str = "auto"
    quant: str = "none"
    repeats: int = 1
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # method options, e.g. {"gamma": 4}
    sweep_gamma: list[int] | None = None
    threads: int | None = None
    warmup: int = 1
    progress: bool = True

    def command_line(self) -> str:
        """The run as one canonical `tokenleap bench` command."""
        parts = ["tokenleap bench", f"--prompts {self.prompts}", f"--methods {','.join(self.methods)}",
                 f"--model {self.model}", f"--max-new-tokens {self.max_new_tokens}",
                 f"--temperature {self.sampling.temperature}", f"--top-k {self.sampling.top_k}",
                 f"--top-p {self.sampling.top_p}", f"--repeats {self.repeats}", f"--seed {self.seed}",
                 f"--warmup {self.warmup}", f"--out {self.out}"]
        optional = {"--draft": self.draft, "--limit": self.limit, "--dtype": self.dtype, "--device": self.device,
                    "--quant": None if self.quant == "none" else self.quant,
                    "--threads": self.threads,
                    "--categories": ",".join(self.categories) if self.categories else None,
                    "--sweep-gamma": ",".join(map(str, self.sweep_gamma)) if self.sweep_gamma else None}
        parts += [f"{flag} {value}" for flag, value in optional.items() if value is not None]
        parts += [(f"--{k}" if v else f"--no-{k}") if isinstance(v, bool) else f"--{k} {v}"
                  for k, v in ((k.replace("_", "-"), v) for k, v in sorted(self.options.items()))]
        return " ".join(parts)


# ---- the run -------------------------------------------------------------------------------

def load_models(config: BenchConfig, methods: list[BenchMethod]) -> tuple[Model, dict[str | None, Model]]:
    """Target, and the drafts some method needs: the run's (key None) and any a column names
    (`sps@draft=self:int4`, keyed by its spec); each loaded once for the whole run."""
    target = get_model(config.model, config.dtype, config.device, config.quant)
    drafts: dict[str | None, Model] = {}
    for m in methods:
        if not m.needs_draft or m.draft in drafts:
            continue
        spec = m.draft if m.draft is not None else config.draft
        draft = require_draft(m.name, load_draft(target, spec, dtype=config.dtype, device=config.device))
        if draft is target and m.base == "hf-assisted":
            # One module as both models would merge the forward counts (and HF's assistant state).
            # (A self: draft is fine: hf-assisted gets a quantized copy of the module, see anchors.)
            raise TokenleapError("hf-assisted needs a draft distinct from the target (a self:int8 draft, or another "
                                 "model's path as --draft)")
        drafts[m.draft] = draft
    return target, drafts


def quantized_targets(config: BenchConfig, methods: list[BenchMethod], target: Model) -> dict[str, Model]:
    """The target under each quantization some column asks for (`ar@quant=int8`), plus the run's
    own target and the unquantized one ("none": the reference quality is measured against)."""
    targets = {config.quant or "none": target}
    for quant in dict.fromkeys(["none"] + [m.quant for m in methods if m.quant]):
        if quant not in targets:
            targets[quant] = get_model(config.model, config.dtype, config.device, quant)
    return targets


def add_agreement(records: list[dict[str, Any]], methods: list[BenchMethod], targets: dict[str, Model],
                  config: BenchConfig, prompt_ids: dict[int, list[int] | str]) -> None:
    """For every record made with quantized weights: teacher-forced top-1 agreement with the
    unquantized model on that model's own greedy answer to the prompt (`agreement`, with the
    positions counted in `agreement_n`). The answers are made once per prompt, untimed."""
    quant_of = {m.name: m.quant or config.quant or "none" for m in methods}
    reference = targets["none"]
    answers: dict[int, list[int]] = {}
    for record in records:
        quant, ids = quant_of.get(record["method"], "none"), prompt_ids.get(record["prompt_index"])
        if quant == "none" or record["error"] or not isinstance(ids, list):
            continue
        if record["prompt_index"] not in answers:
            answers[record["prompt_index"]] = generate(ids, model=reference, max_new_tokens=config.max_new_tokens).token_ids
        same, n = top1_agreement(targets[quant], ids, answers[record["prompt_index"]])
        record["agreement"], record["agreement_n"] = (same / n if n else None), n


def measurable(methods: list[BenchMethod], target: Model) -> tuple[list[BenchMethod], dict[str, str]]:
    """The methods this machine can run, and {name: why not} for an anchor it cannot (llama.cpp
    not installed, or a model from no GGUF file): reported as not measured, never a failure."""
    why = llamacpp.unavailable(target) if any(m.base == llamacpp.NAME for m in methods) else None
    skipped = {m.name: why for m in methods if why and m.base == llamacpp.NAME}
    kept = [m for m in methods if m.name not in skipped]
    if not kept:
        raise TokenleapError(f"nothing to measure: {'; '.join(f'{n}: {w}' for n, w in skipped.items())}")
    return kept, skipped


def run_config(config: BenchConfig, target: Model, draft: Model | None, energy_source: str) -> dict[str, Any]:
    import transformers

    return {"command_line": config.command_line(), "model": target.name, "draft": draft.name if draft else None,
            "dtype": str(target.dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
            "runtime": {**target.runtime(), "dtype_asked": str(config.dtype), "kernel_choice": target.kernels,
                        "cpu": cpu_caps().to_dict()},
            "max_new_tokens": config.max_new_tokens, "sampling": dataclasses.asdict(config.sampling),
            "greedy": config.sampling.greedy, "repeats": config.repeats, "seed": config.seed,
            "prompts_file": str(config.prompts), "limit": config.limit, "categories": config.categories,
            "energy_source": energy_source, "torch": torch.__version__,
            "transformers": transformers.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info()}


def progress_bar(enabled: bool) -> "Progress":
    """Progress over prompt x method x repeat with an ETA, on stderr (stdout gets the tables)."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)


def run_bench(config: BenchConfig) -> dict[str, Any]:
    """Run the benchmark, write results.json (incrementally), report.md and the plots; return the results."""
    methods = plan_methods(config.methods, config.options, config.sweep_gamma)
    for m in methods:  # the model's registered default options lie under the run's and the variant's
        if not m.is_anchor:
            m.options = {**registered_options(config.model, m.base), **m.options}
    prompts = load_prompts(config.prompts, config.limit, config.categories)
    if config.repeats < 1:
        raise TokenleapError(f"--repeats must be >= 1, got {config.repeats}")
    if config.max_new_tokens < 1:
        raise TokenleapError(f"--max-new-tokens must be >= 1, got {config.max_new_tokens}")
    if config.threads is not None:
        if config.threads < 1:
            raise TokenleapError(f"--threads must be >= 1, got {config.threads}")
        torch.set_num_threads(config.threads)
    target, drafts = load_models(config, methods)
    draft = drafts.get(None)  # the run's draft (--draft or the registry's), as results.json names it
    targets = quantized_targets(config, methods, target)
    methods, not_measured = measurable(methods, target)
    meter = EnergyMeter()
    recorder = Recorder(Path(config.out), {**run_config(config, target, draft, meter.source),
                                           "not_measured": not_measured}, methods)

    def target_of(m: BenchMethod) -> Model:
        return targets[m.quant] if m.quant else target

    def run_method(m: BenchMethod, prompt_ids: list[int], seed: int, max_new: int = config.max_new_tokens):
        return generate_once(m, target_of(m), drafts.get(m.draft), prompt_ids, max_new, config.sampling, seed)

    def predictor(m: BenchMethod):
        return lambda stats: predicted_ms(stats, target_of(m), drafts.get(m.draft) if m.needs_draft else None)

    def scorer(m: BenchMethod):
        """Perplexity under the unquantized target; the law check under the method's own target."""
        def score(prompt_ids: list[int], token_ids: list[int], seed: int) -> tuple[float, list[float]]:
            return score_continuation(target_of(m), prompt_ids, token_ids, config.sampling, pit_generator(seed),
                                      reference=targets["none"])
        return score

    prompt_ids = encode_prompts(target, prompts)
    first = next((ids for ids in prompt_ids.values() if isinstance(ids, list)), None)
    recorder.results["config"]["warmup_errors"] = warm_up(methods, run_method, first, config.warmup) if first else []
    recorder.results["config"]["forward_cost"] = forward_costs(target, draft)
    status = "interrupted"
    try:
        with progress_bar(config.progress) as bar:
            task = bar.add_task("bench", total=len(prompts) * len(methods) * config.repeats)
            for repeat in range(config.repeats):
                for prompt in prompts:
                    seed = config.seed + repeat * len(prompts) + prompt.index
                    shift = (prompt.index + repeat) % len(methods)
                    for m in methods[shift:] + methods[:shift]:  # rotate who goes first
                        bar.update(task, description=f"{prompt.category}/{prompt.question_id} {m.name}")
                        recorder.add(measure(m, prompt, prompt_ids[prompt.index], repeat, seed,
                                             lambda ids, s, m=m: run_method(m, ids, s), meter,
                                             None if config.sampling.greedy else scorer(m), target.device,
                                             predictor(m)))
                        bar.advance(task)
                    recorder.save()
        if len(targets) > 1 or target.quant != "none":
            add_agreement(recorder.results["per_prompt"], methods, targets, config, prompt_ids)
        status = "complete"
    finally:
        recorder.save(status)
        write_outputs(recorder.results, Path(config.out))
        recorder.save()  # again, in case writing the report noted a plotting error
    return recorder.results


def write_outputs(results: dict[str, Any], out: Path) -> None:
    """report.md and the plots; best effort, since results.json is what matters."""
    from .plots import write_plots
    from .report import markdown_report

    try:
        plots = write_plots(results, out)
    except Exception as exc:  # noqa: BLE001 - a plotting problem must not lose the report
        plots = []
        results.setdefault("config", {})["plot_error"] = f"{type(exc).__name__}: {exc}"
    (out / "report.md").write_text(markdown_report(results, plots))
