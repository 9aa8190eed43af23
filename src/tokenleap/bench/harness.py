"""Running a benchmark: prompts in, one record per (prompt, method, repeat) out.

Hygiene follows specs/benchmark.md: one process and one model load for every method, warm-up
first, methods interleaved per prompt (rotating their order, so drifting machine noise hits
all of them alike), the same seed, dtype, thread count and max_new_tokens everywhere, and
generated tokens counted the same way (token ids, cut at the first EOS inclusive).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import glob
import json
import math
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from ..decoding.quality import score_continuation
from ..decoding.stats import DecodeStats
from ..decoding.warping import Sampling
from ..errors import TokenleapError
from ..generation import generate
from ..methods import METHODS
from ..methods.sps import SPSOptions
from ..models.cost import forward_ms
from ..models.hardware import cpu_caps, cpu_model, synchronize
from ..models.loading import Model
from ..models.registry import DEFAULT_MODEL
from ..options import check_known, check_value, kind, names, parse_text
from ..planner import encode_prompt, get_model, load_draft, require_draft

if TYPE_CHECKING:
    from rich.progress import Progress

# Anchors outside tokenleap: Hugging Face's own loops, and which of our options they take. An
# option means for them what it means for sps (gamma: draft tokens per round), by the same rules.
HF_METHODS: dict[str, tuple[str, ...]] = {"hf": (), "hf-assisted": ("gamma",)}
HF_OPTIONS = SPSOptions
WARMUP_TOKENS = 16


@dataclass
class Prompt:
    index: int
    question_id: Any
    category: str
    text: str


@dataclass
class BenchMethod:
    """One column of the benchmark: a tokenleap method or an HF anchor, with its options."""

    name: str  # as reported, e.g. "sps" or "sps@g=2" in a gamma sweep
    base: str  # key in METHODS, or "hf" / "hf-assisted"
    options: dict[str, Any]
    needs_draft: bool
    lossless: bool

    @property
    def is_hf(self) -> bool:
        return self.base in HF_METHODS

    def info(self) -> dict[str, Any]:
        """What results.json records about the method, with its effective option values."""
        effective = dict(self.options)
        if not self.is_hf:
            effective = dataclasses.asdict(METHODS[self.base].make_options(self.options))
        return {"name": self.name, "base": self.base, "options": effective,
                "needs_draft": self.needs_draft, "lossless": self.lossless}


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


# ---- prompts -----------------------------------------------------------------------------

def load_prompts(path: str | Path, limit: int | None = None, categories: list[str] | None = None) -> list[Prompt]:
    """Spec-Bench rows (question_id, category, turns); the first turn is the prompt.

    --limit takes prompts round-robin over categories (in file order) so a short run still
    covers every category instead of only the first one in the file."""
    rows = _read_jsonl(Path(path))
    if categories:
        known = list(dict.fromkeys(r["category"] for r in rows))
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise TokenleapError(f"unknown category {unknown[0]!r} in {path}; available: {', '.join(known)}")
        rows = [r for r in rows if r["category"] in categories]
    if limit is not None:
        if limit < 1:
            raise TokenleapError(f"--limit must be >= 1, got {limit}")
        rows = _round_robin(rows)[:limit]
    if not rows:
        raise TokenleapError(f"no prompts to run in {path}")
    return [Prompt(i, r["question_id"], r["category"], r["turns"][0]) for i, r in enumerate(rows)]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise TokenleapError(f"prompt file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TokenleapError(f"{path}, line {number}: bad JSON ({exc.msg})") from None
            turns = row.get("turns") if isinstance(row, dict) else None
            if (not isinstance(turns, list) or not turns or not isinstance(turns[0], str)
                    or "question_id" not in row or not isinstance(row.get("category"), str)):
                raise TokenleapError(f"{path}, line {number}: need question_id, category (text) "
                                     "and turns (a non-empty list of text)")
            rows.append(row)
    return rows


def _round_robin(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_category: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    queues = list(by_category.values())
    out = []
    for i in range(max(len(q) for q in queues)):
        out += [q[i] for q in queues if i < len(q)]
    return out


# ---- methods -----------------------------------------------------------------------------

def accepted_options(base: str) -> tuple[str, ...]:
    if base in HF_METHODS:
        return HF_METHODS[base]
    return names(METHODS[base].options)


def options_schema(base: str) -> type | None:
    """The options class that declares a method's options (None for an unknown method)."""
    return HF_OPTIONS if base in HF_METHODS else METHODS[base].options if base in METHODS else None


def parse_variant(entry: str) -> tuple[str, dict[str, Any]]:
    """"pass@lookahead=2+embeddings=zero" -> ("pass", {"lookahead": 2, "embeddings": "zero"}):
    one method several times in a run, each with its own options (the entry is its label)."""
    name, _, spec = entry.partition("@")
    options: dict[str, Any] = {}
    for item in filter(None, spec.split("+")):
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise TokenleapError(f"bad method variant {entry!r}: options are key=value joined by '+' "
                                 "(e.g. pass@lookahead=2+embeddings=zero)")
        key = key.replace("-", "_")
        schema = options_schema(name)
        # An option the method does not take (a typo, an unknown method) stays text: refused later.
        options[key] = parse_text(kind(schema, key) if schema and key in accepted_options(name) else None, text)
    return name, options


def plan_methods(names: list[str], options: dict[str, Any], sweep_gamma: list[int] | None = None) -> list[BenchMethod]:
    """The methods to run, each given only the options it accepts. With a gamma sweep, every
    method taking `gamma` becomes one method per value, named like `sps@g=2`."""
    if not names:
        raise TokenleapError("no methods given (--methods ar,sps,...)")
    available = list(METHODS) + list(HF_METHODS)
    planned: list[BenchMethod] = []
    for entry in dict.fromkeys(names):  # a method listed twice runs once
        name, variant = parse_variant(entry)
        if name not in available:
            raise TokenleapError(f"unknown method {name!r}; available: {', '.join(available)}")
        takes = accepted_options(name)
        check_known(variant, takes, owner=f"method {name!r}")
        own = {**{k: v for k, v in options.items() if k in takes}, **variant}
        needs_draft = name == "hf-assisted" or (name in METHODS and METHODS[name].needs_draft)
        lossless = name in HF_METHODS or METHODS[name].lossless
        gammas = sweep_gamma if sweep_gamma and "gamma" in takes and "gamma" not in variant else [None]
        for g in gammas:
            opts = own if g is None else {**own, "gamma": g}
            label = entry if g is None else f"{entry}@g={g}"
            planned.append(BenchMethod(label, name, opts, needs_draft, lossless))
    if sweep_gamma and not any("@g=" in m.name for m in planned):
        raise TokenleapError("--sweep-gamma needs a method with a gamma option among --methods (e.g. sps)")
    for m in planned:  # bad option values fail now, not mid-run
        if m.is_hf:
            m.options = {k: check_value(HF_OPTIONS, k, v, owner=f"method {m.base!r}") for k, v in m.options.items()}
        else:
            METHODS[m.base].make_options(m.options)
    return planned


def unused_options(methods: list[BenchMethod], options: dict[str, Any]) -> list[str]:
    used = {k for m in methods for k in accepted_options(m.base)}
    return sorted(set(options) - used)


# ---- measuring -----------------------------------------------------------------------------

class EnergyMeter:
    """Cumulative joules: Intel RAPL package counters when readable, else a labelled estimate."""

    WATTS_PER_CORE = 10.0
    ROOT = "/sys/class/powercap"

    def __init__(self) -> None:
        # Sub-zones (intel-rapl:0:0, ...) are parts of their package, so only packages are summed.
        packages = [z for z in sorted(glob.glob(f"{self.ROOT}/intel-rapl:*"))
                    if re.fullmatch(r"intel-rapl:\d+", os.path.basename(z))]
        self.zones = [z for z in packages if _read_int(z + "/energy_uj") is not None]  # often root-only
        self.source = "rapl" if self.zones else f"estimate: process CPU time x {self.WATTS_PER_CORE:g} W per core"
        self._last = {z: _read_int(z + "/energy_uj") for z in self.zones}
        self._total_uj = 0

    def read(self) -> float:
        if not self.zones:
            # process_time sums CPU seconds over all threads, i.e. core-seconds.
            return time.process_time() * self.WATTS_PER_CORE
        for zone in self.zones:
            now = _read_int(zone + "/energy_uj") or 0
            delta = now - self._last[zone]
            if delta < 0:  # the counter wrapped around
                delta += _read_int(zone + "/max_energy_range_uj") or 0
            self._total_uj += delta
            self._last[zone] = now
        return self._total_uj / 1e6


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def count_forwards(module: torch.nn.Module | None) -> Iterator[list[int]]:
    """Count calls of a module's forward (HF generate's target or assistant steps)."""
    calls = [0]
    handle = None
    if module is not None:
        handle = module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        if handle is not None:
            handle.remove()


@contextlib.contextmanager
def assistant_settings(draft: Model | None, gamma: int | None) -> Iterator[None]:
    """With a gamma, make HF's assistant draft exactly gamma tokens per round, like sps; the
    assistant's generation_config is restored afterwards. Without one, HF's defaults apply."""
    if draft is None or gamma is None:
        yield
        return
    config = draft.hf_model.generation_config
    wanted = {"num_assistant_tokens": gamma, "num_assistant_tokens_schedule": "constant",
              "assistant_confidence_threshold": 0.0}
    saved = {k: getattr(config, k, None) for k in wanted}
    for k, v in wanted.items():
        setattr(config, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(config, k, v)


def cut_at_eos(ids: list[int], eos: frozenset[int]) -> list[int]:
    """Ids up to and including the first EOS, as tokenleap's driver counts them."""
    for i, t in enumerate(ids):
        if t in eos:
            return ids[:i + 1]
    return ids


def hf_generate(method: BenchMethod, target: Model, draft: Model | None, prompt_ids: list[int],
                max_new_tokens: int, sampling: Sampling, seed: int) -> tuple[list[int], DecodeStats]:
    """HF `generate` (plain or assisted) with the same warping, EOS and length as tokenleap."""
    eos = sorted(target.eos_token_ids)
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=not sampling.greedy,
                                  eos_token_id=eos or None, pad_token_id=eos[0] if eos else None,
                                  repetition_penalty=1.0)  # explicit, so a checkpoint's defaults cannot differ
    if not sampling.greedy:
        kwargs.update(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    assistant = draft if method.base == "hf-assisted" else None
    if assistant is not None:
        kwargs["assistant_model"] = assistant.hf_model
    ids = torch.tensor([prompt_ids], device=target.hf_model.device)
    torch.manual_seed(seed)
    with (count_forwards(target.hf_model) as target_calls,
          count_forwards(assistant.hf_model if assistant else None) as draft_calls,
          assistant_settings(assistant, method.options.get("gamma"))):
        out = target.hf_model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    new = cut_at_eos(out[0, len(prompt_ids):].tolist(), target.eos_token_ids)
    stats = DecodeStats(method=method.name, prompt_tokens=len(prompt_ids), new_tokens=len(new),
                        target_forwards=target_calls[0], draft_forwards=draft_calls[0],
                        **{**target.runtime(), "kernels": "hf"})  # HF's own forward, whatever our runner's layout
    if assistant is not None:
        # Every target forward commits one token of its own; the rest were accepted drafts.
        # HF does not expose how many drafts it proposed, so the acceptance rate stays unknown.
        stats.accepted = max(0, len(new) - stats.target_forwards)
    return new, stats


def generate_once(method: BenchMethod, target: Model, draft: Model | None, prompt_ids: list[int],
                  max_new_tokens: int, sampling: Sampling, seed: int) -> tuple[list[int], DecodeStats]:
    if method.is_hf:
        return hf_generate(method, target, draft, prompt_ids, max_new_tokens, sampling, seed)
    result = generate(prompt_ids, method=method.base, model=target, draft=draft if method.needs_draft else None,
                      max_new_tokens=max_new_tokens, temperature=sampling.temperature, top_k=sampling.top_k,
                      top_p=sampling.top_p, seed=seed, **method.options)
    result.stats.method = method.name
    return result.token_ids, result.stats


# ---- the run -------------------------------------------------------------------------------

def load_models(config: BenchConfig, methods: list[BenchMethod]) -> tuple[Model, Model | None]:
    """Target, and the draft when some method needs one; each loaded once for the whole run."""
    target = get_model(config.model, config.dtype, config.device, config.quant)
    needing = next((m.name for m in methods if m.needs_draft), None)
    if needing is None:
        return target, None
    draft = require_draft(needing, load_draft(target, config.draft, dtype=config.dtype, device=config.device))
    if draft.hf_model is target.hf_model and any(m.base == "hf-assisted" for m in methods):
        # One module as both models would merge the forward counts (and HF's assistant state).
        # (A self-draft is a view of the target's own module: HF's loop cannot run it as another model.)
        raise TokenleapError("hf-assisted needs a draft distinct from the target (pass a copy's path as --draft; "
                             "a self: draft shares the target's module)")
    return target, draft


def machine_info() -> dict[str, Any]:
    return {"hostname": platform.node(), "platform": platform.platform(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "python": platform.python_version()}


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


def forward_costs(target: Model, draft: Model | None) -> dict[str, float]:
    """Target (and draft) decoding-forward times and the draft's cost relative to the target."""
    costs = {"target_ms": forward_ms(target)}
    if draft is not None and draft is not target:
        costs["draft_ms"] = forward_ms(draft)
        costs["draft_ratio"] = costs["draft_ms"] / costs["target_ms"]
    return costs


class Recorder:
    """Holds the results and writes results.json atomically, so an interrupted or crashed run
    still leaves every finished record on disk."""

    def __init__(self, out: Path, config: dict[str, Any], methods: list[BenchMethod]) -> None:
        self.out = out
        self.results: dict[str, Any] = {"status": "running", "config": config,
                                        "methods": [m.info() for m in methods], "summary": {}, "per_prompt": []}

    def add(self, record: dict[str, Any]) -> None:
        self.results["per_prompt"].append(record)

    def save(self, status: str | None = None) -> Path:
        from .report import save_results, summarize

        if status:
            self.results["status"] = status
        self.results["summary"] = summarize(self.results)
        self.out.mkdir(parents=True, exist_ok=True)
        return save_results(self.results, self.out / "results.json")


PIT_SEED_OFFSET = 0x5EED_0000


def pit_generator(seed: int) -> torch.Generator:
    """The law check's own uniforms for a record generated with `seed`: another stream than the
    method's draws, since correlated with them the check would see structure that is not there."""
    return torch.Generator().manual_seed(PIT_SEED_OFFSET + seed)


def pit_record(pit: list[float]) -> list[float | None]:
    """PIT values as stored: 5 decimals (far finer than a KS test resolves), None for NaN
    (a token outside the law's support; JSON has no NaN)."""
    return [None if math.isnan(u) else round(u, 5) for u in pit]


def measure(method: BenchMethod, prompt: Prompt, prompt_ids: list[int] | str, repeat: int, seed: int,
            run: Callable[[list[int], int], tuple[list[int], DecodeStats]], meter: EnergyMeter,
            score: Callable[[list[int], list[int], int], tuple[float, list[float]]] | None = None,
            device: torch.device | str = "cpu") -> dict[str, Any]:
    """One timed generation as a per_prompt record; any exception becomes the record's error.
    `score` (sampling runs: perplexity and the law check's PIT values) runs after the clock stops."""
    record: dict[str, Any] = {"question_id": prompt.question_id, "category": prompt.category,
                              "prompt_index": prompt.index, "method": method.name, "repeat": repeat,
                              "seed": seed, "tokens": 0, "wall_s": 0.0, "energy_j": 0.0, "token_ids": [],
                              "stats": None, "ppl": None, "error": None}
    if isinstance(prompt_ids, str):  # the prompt itself is unusable: every method fails it
        record["error"] = prompt_ids
        return record
    try:
        synchronize(device)
        energy0, start = meter.read(), time.perf_counter()
        token_ids, stats = run(prompt_ids, seed)
        synchronize(device)  # queued device work belongs to this generation
        wall = time.perf_counter() - start
        record.update(tokens=len(token_ids), wall_s=wall, energy_j=meter.read() - energy0, token_ids=token_ids)
        stats.wall_s = wall  # the harness's clock, identical for every method
        record["stats"] = stats.to_dict()
        if score is not None and token_ids:
            record["ppl"], pit = score(prompt_ids, token_ids, seed)
            record["pit"] = pit_record(pit)
    except Exception as exc:  # noqa: BLE001 - one bad prompt must not end the run
        record["error"] = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
    return record


def encode_prompts(target: Model, prompts: list[Prompt]) -> dict[int, list[int] | str]:
    """Token ids per prompt (chat template applied), or the reason a prompt cannot be run."""
    ids: dict[int, list[int] | str] = {}
    for p in prompts:
        try:
            ids[p.index] = encode_prompt(target, p.text)
        except TokenleapError as exc:
            ids[p.index] = f"TokenleapError: {exc}"
    return ids


def warm_up(methods: list[BenchMethod], run_method: Callable[..., Any], prompt_ids: list[int],
            rounds: int) -> list[str]:
    """A few untimed generations per method (allocator, caches, lazy init); errors are only noted,
    since a method that fails here will be reported failed prompt by prompt anyway."""
    errors = []
    for _ in range(rounds):
        for m in methods:
            try:
                run_method(m, prompt_ids, 0, WARMUP_TOKENS)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{m.name}: {type(exc).__name__}: {exc}".splitlines()[0])
    return errors


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
    prompts = load_prompts(config.prompts, config.limit, config.categories)
    if config.repeats < 1:
        raise TokenleapError(f"--repeats must be >= 1, got {config.repeats}")
    if config.max_new_tokens < 1:
        raise TokenleapError(f"--max-new-tokens must be >= 1, got {config.max_new_tokens}")
    if config.threads is not None:
        if config.threads < 1:
            raise TokenleapError(f"--threads must be >= 1, got {config.threads}")
        torch.set_num_threads(config.threads)
    target, draft = load_models(config, methods)
    meter = EnergyMeter()
    recorder = Recorder(Path(config.out), run_config(config, target, draft, meter.source), methods)

    def run_method(m: BenchMethod, prompt_ids: list[int], seed: int, max_new: int = config.max_new_tokens):
        return generate_once(m, target, draft, prompt_ids, max_new, config.sampling, seed)

    def score(prompt_ids: list[int], token_ids: list[int], seed: int) -> tuple[float, list[float]]:
        return score_continuation(target, prompt_ids, token_ids, config.sampling, pit_generator(seed))

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
                                             None if config.sampling.greedy else score, target.device))
                        bar.advance(task)
                    recorder.save()
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
