"""PaSS's lookahead embeddings as an artifact: where they live, how they are read, written and
made untrained. (The early-exit heads, PPD's artifact, sit beside them in `early_exit.py`.)

A lookahead artifact directory (`tokenleap train lookahead`) holds lookahead.safetensors with
one [L, d] float32 tensor under TENSOR_KEY, and training.json with how it was made.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ..errors import TokenleapError
from .registry import ARTIFACT_FILES, lookup

INITS = ("mean", "zero", "random")  # untrained embeddings; "mean" is the paper's starting point
TENSOR_KEY = "lookahead"
log = logging.getLogger("tokenleap")
FILE = ARTIFACT_FILES["lookahead"]  # lookahead.safetensors


def artifact_for(model) -> Path | None:
    """The trained embeddings (`tokenleap train lookahead`) registered for a model, if any: a
    built-in model's committed ones, or the `lookahead` directory of its user registry entry."""
    entry = lookup(model.base_name)
    return None if entry is None else entry.artifact("lookahead")


def check_spec(spec: str, kinds: tuple[str, ...]) -> None:
    """`spec` must be one of `kinds` or an existing .safetensors file (the decoding option and
    the trainer's --init both name embeddings this way)."""
    if spec in kinds:
        return
    if not spec.endswith(".safetensors"):
        raise TokenleapError(f"unknown embeddings {spec!r}: use {', '.join(kinds)} or a path to a .safetensors file")
    if not Path(spec).expanduser().is_file():
        raise TokenleapError(f"lookahead embeddings file not found: {spec}")


def initial_embeddings(model, kind: str, n: int) -> torch.Tensor:
    """Untrained lookahead embeddings [n, d] (float32): mean token embedding, zeros, or random
    with the embedding table's scale (fixed seed, so a run is reproducible). The table is what
    the runner feeds the model (Gemma's embedding layer scales by sqrt(d), for one)."""
    runner = model.runner
    with torch.no_grad():
        table = runner.embed(torch.arange(runner.vocab_size, device=runner.device)[None])[0].float().cpu()
    if kind == "mean":
        return table.mean(0).expand(n, -1).clone()
    if kind == "zero":
        return table.new_zeros(n, table.shape[1])
    if kind == "random":
        noise = torch.randn(n, table.shape[1], generator=torch.Generator().manual_seed(0))
        return noise * table.std() + table.mean(0)
    raise TokenleapError(f"unknown embeddings {kind!r}")


def load_embeddings(path: str | Path, hidden: int) -> torch.Tensor:
    """[m, d] float32 lookahead embeddings from a file written by `save_embeddings`."""
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


def save_embeddings(table: torch.Tensor, out: Path, model_name: str, record: dict) -> Path:
    """Write an artifact directory: the embeddings ([L, d] float32: a few KB) and training.json."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({TENSOR_KEY: table.float().contiguous()}, str(out / FILE),
              metadata={"format": "pt", "model": model_name})
    (out / "training.json").write_text(json.dumps(record, indent=2))
    return out / FILE


def lookahead_embeddings(model, spec: str, n: int) -> torch.Tensor:
    """The n lookahead embeddings [n, d] (float32) that `spec` names (auto, an init kind or a
    file), kept by the model (`Model.memo`); a changed file is read again."""
    path = artifact_for(model) if spec == "auto" else None if spec in INITS else Path(spec).expanduser()
    key = ("lookahead", spec, n, path, path.stat().st_mtime_ns if path else None)
    return model.memo(key, lambda: _make(model, spec, n, path))


def _make(model, spec: str, n: int, path: Path | None) -> torch.Tensor:
    if path is None:
        if spec == "auto":  # once per model and length (memoized by the caller)
            log.warning("note: no trained lookahead embeddings for %s: pass drafts with untrained (mean) ones; "
                        "train them with `tokenleap train lookahead --model %s --export DIR --register NAME`",
                        model.base_name, model.base_name)
        return initial_embeddings(model, "mean" if spec == "auto" else spec, n)
    table = load_embeddings(path, model.hf_model.get_input_embeddings().weight.shape[1])
    if len(table) < n:
        if spec != "auto":
            raise TokenleapError(f"{path} holds {len(table)} lookahead embeddings; lookahead={n} needs {n}")
        # "auto" asked for more than were trained: the extra ones start untrained.
        table = torch.cat([table, initial_embeddings(model, "mean", n - len(table))])
    # A prefix of a trained set is itself a trained set: LA_i only ever sees LA_1..LA_(i-1).
    return table[:n]
