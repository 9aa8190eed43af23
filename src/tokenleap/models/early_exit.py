"""Early-exit heads for PPD: next-token candidates from the hidden state after layer d.

Two kinds:
- "shared": the model's own final norm + LM head on h_d (the "logit lens"). No parameters, but
  on a 135M model the full head (49152 x 576) costs as much as ~8 layers, and it matches rarely.
- "trained" (`ExitHead`, made by `tokenleap train early-exit`): a tuned-lens translator and a
  reduced vocabulary. h_d goes through x = h_d + A h_d + b (A, b start at zero, so training
  starts from the shared head), a trainable copy of the model's own output transform (its final
  norm, whatever its kind: RMSNorm, Gemma's (1 + w) RMSNorm, LayerNorm with bias, OPT's norm and
  projection), then logits over the V' tokens the target emits most, using the target's own
  output-embedding rows (frozen, not stored) plus a trainable per-token bias, soft-capped as the
  model's own head is (Gemma 2). Cost on the critical path: D*D + V'*D multiply-adds, about
  0.7 of a layer for D=576, V'=4096, against ~8 layers for the shared head. Tokens outside the
  V' are never candidates; that only lowers the match rate, never exactness.

Both runners serve both kinds: the lean runner's layers or the HF runner's per-layer access
(`models.layered`) give h_d, and the heads are built from the HF module either way.

An artifact directory holds heads for several exit layers: heads.safetensors (bf16),
vocab_subset.json, config.json (dimensions, layers, the layer to use by default) and training.json.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..errors import TokenleapError, first_line
from .layered import LayerPlan, final_logit_cap, output_modules, soft_cap
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
    """Translator + the model's output transform + reduced-vocabulary head for one exit layer
    (see the module docstring)."""

    def __init__(self, hidden: int, rows: torch.Tensor, vocab_ids: torch.Tensor, final: list[torch.nn.Module],
                 row_bias: torch.Tensor | None = None, softcap: float | None = None) -> None:
        super().__init__()
        dtype = rows.dtype
        self.softcap = softcap
        self.translator = torch.nn.Linear(hidden, hidden, dtype=dtype)
        torch.nn.init.zeros_(self.translator.weight)
        torch.nn.init.zeros_(self.translator.bias)
        # Copies: the head trains its own, and runs on PPD's branch worker without touching the model.
        self.final = torch.nn.Sequential(*(copy.deepcopy(m).to(dtype) for m in final))
        for p in self.final.parameters():
            p.requires_grad_(True)  # the model's are frozen; the copies train
        self.bias = torch.nn.Parameter(torch.zeros(len(vocab_ids), dtype=dtype))
        self.register_buffer("vocab_ids", vocab_ids.to(torch.long), persistent=False)
        self.register_buffer("rows", rows.detach()[vocab_ids].to(dtype).clone(), persistent=False)
        self.register_buffer("row_bias", None if row_bias is None else row_bias.detach()[vocab_ids].to(dtype).clone(),
                             persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Hidden states [..., D] -> logits over the reduced vocabulary [..., V']."""
        h = h.to(self.rows.dtype)
        x = self.final(h + self.translator(h))
        logits = F.linear(x, self.rows, self.bias if self.row_bias is None else self.bias + self.row_bias)
        # The shared head's soft-capping (`LayerStack.logits`), so training starts from it exactly.
        return soft_cap(logits, self.softcap)

    def topk(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """Full-vocabulary ids of the k best candidates ([..., D] -> [..., k])."""
        return self.vocab_ids[self(h).topk(min(k, len(self.vocab_ids)), dim=-1).indices]

    def cost_params(self) -> int:
        """Multiply-adds per token: what it costs on the critical path (a projection in the
        output transform, OPT's, counts too; norms are negligible)."""
        matrices = sum(p.numel() for p in self.final.parameters() if p.dim() > 1)
        return self.translator.weight.numel() + matrices + self.rows.numel()


def new_heads(model, layers: list[int], vocab_ids: torch.Tensor, dtype: torch.dtype = torch.float32
              ) -> dict[int, ExitHead]:
    """Fresh heads (equal to the shared head restricted to `vocab_ids`) for the given exit layers,
    built from the model's own modules: its output transform (`layered.output_modules`), output
    embeddings and final soft-capping."""
    hf = model.hf_model
    out = hf.get_output_embeddings()
    # A quantized head (quant= on the HF runner) keeps codes, not a weight: its dequantized rows.
    rows = out.weight if hasattr(out, "weight") else out.qweight.dequantize()
    text = hf.config.get_text_config(decoder=True)
    final = output_modules(hf)
    cap = final_logit_cap(hf.config)
    return {d: ExitHead(text.hidden_size, rows.to(dtype), vocab_ids, final, out.bias, cap) for d in layers}


def save_heads(heads: dict[int, ExitHead], vocab_ids: torch.Tensor, model, out: Path, extra: dict) -> None:
    """Write the trained parameters (bf16) and what is needed to rebuild the heads on `model`."""
    out.mkdir(parents=True, exist_ok=True)
    tensors = {f"layer{d}.{name}": p.detach().to(torch.bfloat16).contiguous()
               for d, head in heads.items() for name, p in head.named_parameters()}
    save_file(tensors, str(out / "heads.safetensors"), metadata={"format": "pt"})
    (out / "vocab_subset.json").write_text(json.dumps(vocab_ids.tolist()))
    text = model.config.get_text_config(decoder=True)
    config = {"layers": sorted(heads), "hidden_size": text.hidden_size, "num_layers": text.num_hidden_layers,
              "vocab_size": model.runner.vocab_size, **extra}
    (out / "config.json").write_text(json.dumps(config, indent=2))


def load_heads(path: str | Path, model, dtype: torch.dtype | None = None) -> tuple[dict[int, ExitHead], dict]:
    """Heads from an artifact directory, rebuilt on `model`'s LM head; returns (heads, config)."""
    path = Path(path)
    if not (path / "heads.safetensors").is_file():
        raise TokenleapError(f"no early-exit heads in {path} (expected heads.safetensors; "
                             f"make them with `tokenleap train early-exit`)")
    config = json.loads((path / "config.json").read_text())
    text = model.config.get_text_config(decoder=True)
    if (config["hidden_size"], config["num_layers"], config["vocab_size"]) != (
            text.hidden_size, text.num_hidden_layers, model.runner.vocab_size):
        raise TokenleapError(f"the early-exit heads in {path} were trained for another model "
                             f"({config['num_layers']} layers, width {config['hidden_size']}, "
                             f"vocabulary {config['vocab_size']})")
    vocab_ids = torch.tensor(json.loads((path / "vocab_subset.json").read_text()), dtype=torch.long)
    weights = load_file(str(path / "heads.safetensors"))
    heads = new_heads(model, config["layers"], vocab_ids, dtype or model.runner.dtype)
    for d, head in heads.items():
        state = {k.split(".", 1)[1]: v for k, v in weights.items() if k.startswith(f"layer{d}.")}
        if "norm" in state:  # heads written before the output transform was a module copy: an RMSNorm weight
            state["final.0.weight"] = state.pop("norm")
        try:
            head.load_state_dict(state)
        except RuntimeError as exc:  # another output transform (a head trained on another family)
            raise TokenleapError(f"the early-exit heads in {path} do not fit model type "
                                 f"{model.config.model_type!r}: {first_line(exc)}") from None
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
    layers = runner.num_layers
    lean = isinstance(runner, LlamaRunner)
    path = (artifact_for(model.base_name) if head in ("auto", "trained")
            else None if head == "shared" else Path(head))
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
            "and LM head); train them with `tokenleap train early-exit --model %s --export DIR --register NAME`",
            model.base_name, model.base_name))
    d = exit_layer or (layers + 1) // 2
    if not 1 <= d < layers:
        raise TokenleapError(f"exit_layer must be in 1..{layers - 1} for a {layers}-layer model, got {d}")
    out = model.hf_model.get_output_embeddings()
    head_size = runner.head_w.numel() if lean else out.in_features * out.out_features
    return EarlyExit("shared", d, lambda h, k: runner.head(h).topk(k, dim=-1).indices, head_size / layer_size(runner))


@torch.no_grad()
def exit_states(model: Model, ids: list[int], layers: list[int]) -> dict[int, torch.Tensor]:
    """Teacher-forced hidden states [T, D] of every position of `ids` after d layers, for each d:
    the lean runner's layers, or the HF runner's per-layer access (`models.layered`) with the
    cache and masks ppd's main stream uses (sliding windows applied by position)."""
    runner = model.runner
    if not isinstance(runner, LlamaRunner):
        stack, wanted, out = runner.layer_stack(), set(layers), {}
        positions = torch.arange(len(ids), device=runner.device)

        def keep(i: int, h: torch.Tensor) -> None:
            if i + 1 in wanted:
                out[i + 1] = h[0]

        # Layers past the deepest d are passed over; only the final norm runs on what is left.
        stack.run(LayerPlan(0, max(layers), after=keep), torch.tensor([ids], device=runner.device), positions,
                  runner.new_cache().inner, runner.masks(0, positions, None))
        return out
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
