"""Early-exit heads for PPD: next-token candidates from the hidden state after layer d.

Two kinds:
- "shared": the model's own final norm + LM head on h_d (the "logit lens"). No parameters, but
  on a 135M model the full head (49152 x 576) costs as much as ~8 layers, and it matches rarely.
- "trained" (`ExitHead`, made by `tokenleap train early-exit`): a tuned-lens translator and a
  reduced vocabulary. h_d goes through x = h_d + A h_d + b (A, b start at zero, so training
  starts from the shared head), the final RMSNorm (its own trainable copy), then logits over
  the V' tokens the target emits most, using the target's own LM-head rows (frozen, not stored)
  plus a trainable per-token bias. Cost on the critical path: D*D + V'*D multiply-adds, about
  0.7 of a layer for D=576, V'=4096, against ~8 layers for the shared head. Tokens outside the
  V' are never candidates; that only lowers the match rate, never exactness.

An artifact directory holds heads for several exit layers: heads.safetensors (bf16),
vocab_subset.json, config.json (dimensions, layers, the layer to use by default) and training.json.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..errors import TokenleapError
from .llama import LlamaRunner
from .registry import BUILT_IN, artifact_dir, lookup

log = logging.getLogger("tokenleap")

if TYPE_CHECKING:
    from .loading import Model


def artifact_for(model_name: str) -> Path | None:
    """The trained-head artifact for a model name, if there is one: the `exit_heads` directory
    of its user registry entry, else the committed one."""
    entry = lookup(model_name)
    if entry is not None and entry.source != BUILT_IN:
        found = entry.artifact("exit_heads")
        return found.parent if found else None
    path = artifact_dir(model_name, "ppd")
    return path if (path / "heads.safetensors").is_file() else None


class ExitHead(torch.nn.Module):
    """Translator + norm + reduced-vocabulary head for one exit layer (see the module docstring)."""

    def __init__(self, lm_head: torch.Tensor, vocab_ids: torch.Tensor, norm: torch.Tensor, eps: float) -> None:
        super().__init__()
        hidden = lm_head.shape[1]
        self.eps = eps
        self.translator = torch.nn.Linear(hidden, hidden, dtype=lm_head.dtype)
        torch.nn.init.zeros_(self.translator.weight)
        torch.nn.init.zeros_(self.translator.bias)
        self.norm = torch.nn.Parameter(norm.detach().clone().to(lm_head.dtype))
        self.bias = torch.nn.Parameter(torch.zeros(len(vocab_ids), dtype=lm_head.dtype))
        self.register_buffer("vocab_ids", vocab_ids.to(torch.long), persistent=False)
        self.register_buffer("rows", lm_head.detach()[vocab_ids].clone(), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., D] -> logits over the reduced vocabulary [..., V']."""
        h = h.to(self.rows.dtype)
        x = h + self.translator(h)
        xf = x.float()
        x = self.norm * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return F.linear(x, self.rows, self.bias)

    def topk(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """Full-vocabulary ids of the k best candidates ([..., D] -> [..., k])."""
        return self.vocab_ids[self(h).topk(min(k, len(self.vocab_ids)), dim=-1).indices]

    def cost_params(self) -> int:
        """Multiply-adds per token: what it costs on the critical path."""
        return self.translator.weight.numel() + self.rows.numel()


def new_heads(model, layers: list[int], vocab_ids: torch.Tensor, dtype: torch.dtype = torch.float32
              ) -> dict[int, ExitHead]:
    """Fresh heads (equal to the shared head restricted to `vocab_ids`) for the given exit layers."""
    lm_head = model.hf_model.get_output_embeddings().weight.to(dtype)
    norm = model.hf_model.model.norm.weight
    return {d: ExitHead(lm_head, vocab_ids, norm, model.config.rms_norm_eps) for d in layers}


def save_heads(heads: dict[int, ExitHead], vocab_ids: torch.Tensor, model, out: Path, extra: dict) -> None:
    """Write the trained parameters (bf16) and what is needed to rebuild the heads on `model`."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"layer{d}.{name}": p.detach().to(torch.bfloat16).contiguous()
               for d, head in heads.items() for name, p in head.named_parameters()}
    save_file(tensors, str(out / "heads.safetensors"), metadata={"format": "pt"})
    (out / "vocab_subset.json").write_text(json.dumps(vocab_ids.tolist()))
    config = {"layers": sorted(heads), "hidden_size": model.config.hidden_size,
              "num_layers": model.config.num_hidden_layers, "vocab_size": model.runner.vocab_size, **extra}
    (out / "config.json").write_text(json.dumps(config, indent=2))


def load_heads(path: str | Path, model, dtype: torch.dtype | None = None) -> tuple[dict[int, ExitHead], dict]:
    """Heads from an artifact directory, rebuilt on `model`'s LM head; returns (heads, config)."""
    path = Path(path)
    if not (path / "heads.safetensors").is_file():
        raise TokenleapError(f"no early-exit heads in {path} (expected heads.safetensors; "
                             f"make them with `tokenleap train early-exit`)")
    config = json.loads((path / "config.json").read_text())
    if (config["hidden_size"], config["num_layers"], config["vocab_size"]) != (
            model.config.hidden_size, model.config.num_hidden_layers, model.runner.vocab_size):
        raise TokenleapError(f"the early-exit heads in {path} were trained for another model "
                             f"({config['num_layers']} layers, width {config['hidden_size']}, "
                             f"vocabulary {config['vocab_size']})")
    vocab_ids = torch.tensor(json.loads((path / "vocab_subset.json").read_text()), dtype=torch.long)
    weights = load_file(str(path / "heads.safetensors"))
    heads = new_heads(model, config["layers"], vocab_ids, dtype or model.runner.dtype)
    for d, head in heads.items():
        head.load_state_dict({k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith(f"layer{d}.")})
        head.requires_grad_(False).eval()
    return heads, config


# -- PPD's use of the heads -----------------------------------------------------------------
@dataclass
class EarlyExit:
    """What PPD asks of an exit head: candidates from a layer-d state, and their cost."""

    kind: str  # "shared" or "trained"
    layer: int  # d
    topk: Callable[[torch.Tensor, int], torch.Tensor]  # hidden [..., D] -> candidate ids [..., k]
    cost: float  # h: multiply-adds per token relative to one layer's


def layer_size(runner) -> int:
    """Multiply-adds of one transformer layer per token (its weight count): the latency unit."""
    if not isinstance(runner, LlamaRunner):
        return runner.layer_stack().layer_size()
    layer = runner.layers[0]
    return sum(w.numel() for w in (layer.qkv_w, layer.o_w, layer.gate_up_w, layer.down_w))


def exit_head(model: Model, head: str = "auto", exit_layer: int = 0) -> EarlyExit:
    """The early-exit head `head` names, at layer `exit_layer` (0 = default) of `model`."""
    runner = model.runner
    if not isinstance(runner, LlamaRunner) and head not in ("auto", "shared"):
        raise TokenleapError(f"trained early-exit heads run on the lean runner (Llama family); model type "
                             f"{model.config.model_type!r} runs ppd with head='shared'")
    layers = runner.num_layers
    lean = isinstance(runner, LlamaRunner)
    path = (artifact_for(model.base_name) if head in ("auto", "trained") and lean
            else None if head in ("shared", "auto") else Path(head))
    if head == "trained" and path is None:
        raise TokenleapError(f"no trained early-exit heads are committed for model {model.name!r}: "
                             "train them with `tokenleap train early-exit` and pass head=<path>")
    if path is not None:
        # Kept by the model (rebuilt on its LM head, so they belong to it), read once per file.
        heads, config = model.memo(("exit-heads", str(Path(path).resolve())), lambda: load_heads(path, model))
        d = exit_layer or config["default_layer"]
        if d in heads:
            trained = heads[d]
            return EarlyExit("trained", d, trained.topk, trained.cost_params() / layer_size(runner))
        if head != "auto":
            raise TokenleapError(f"the trained heads in {path} cover exit layers {sorted(heads)}, not {d}")
    if head == "auto":
        model.memo(("exit-heads-notice",), lambda: log.warning(
            "note: no trained early-exit heads for %s: ppd proposes with the shared head (the model's own norm "
            "and LM head)%s", model.base_name,
            f"; train them with `tokenleap train early-exit --model {model.base_name} --export DIR --register NAME`"
            if lean else ""))
    d = exit_layer or (layers + 1) // 2
    if not 1 <= d < layers:
        raise TokenleapError(f"exit_layer must be in 1..{layers - 1} for a {layers}-layer model, got {d}")
    out = model.hf_model.get_output_embeddings()
    head_size = runner.head_w.numel() if lean else out.in_features * out.out_features
    return EarlyExit("shared", d, lambda h, k: runner.head(h).topk(k, dim=-1).indices, head_size / layer_size(runner))


@torch.no_grad()
def exit_states(model: Model, ids: list[int], layers: list[int]) -> dict[int, torch.Tensor]:
    """Teacher-forced hidden states [T, D] of every position of `ids` after d layers, for each d."""
    runner = model.runner
    cache = runner.new_cache(1, len(ids))
    x = runner.embed(torch.tensor([ids]))
    out, done = {}, 0
    for d in sorted(layers):
        x = runner.hidden_states(cache, x, layers=range(done, d))  # cache.length stays 0: same positions
        out[d], done = x[0], d
    return out


@torch.no_grad()
def teacher_forced_matches(model: Model, head: EarlyExit, prompt_ids: list[int], generated: list[int], k: int
                           ) -> list[bool]:
    """Offline match indicator: generated[i] is among the head's top-k at the position before it."""
    states = exit_states(model, prompt_ids + generated[:-1], [head.layer])[head.layer][len(prompt_ids) - 1:]
    candidates = head.topk(states, k)
    return [bool((c == t).any()) for c, t in zip(candidates, generated)]
