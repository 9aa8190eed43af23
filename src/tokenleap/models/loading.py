"""`load_model`: registry names, local HF directories, GGUF files and hub ids -> `Model`."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import shutil
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..errors import TokenleapError, first_line
from . import kernels, llama
from .hardware import dtype_name, resolve_device, resolve_dtype
from .hf import HFRunner
from .registry import REGISTRY, SUBSET_FILE, cache_home, entries, lookup
from .runner import Runner

Messages = list[dict[str, str]]
MEMO_SIZE = 8  # artifacts kept per model (see Model.memo)


@dataclass
class Model:
    """A loaded causal LM: tokenizer, HF module, and the runner methods execute it with."""

    name: str
    hf_model: PreTrainedModel
    tokenizer: Any
    runner: Runner
    eos_token_ids: frozenset[int] = field(default_factory=frozenset)
    kernels: dict[str, Any] = field(default_factory=dict)  # the weight layout and how it was chosen
    # Models made from this one (self-drafts, by their spec "self:int8"), owned here so they live
    # and die with it; at most one per quantization.
    derived: dict[str, "Model"] = field(default_factory=dict, repr=False, compare=False)
    # Artifacts loaded for this model (lookahead embeddings, early-exit heads), owned here so
    # they die with it; at most MEMO_SIZE, the least recently used dropped first.
    _memo: "OrderedDict[tuple, Any]" = field(default_factory=OrderedDict, init=False, repr=False, compare=False)

    def memo(self, key: tuple, make: Callable[[], Any]) -> Any:
        """`make()`, computed once per key for this model (see `_memo`)."""
        if key in self._memo:
            self._memo.move_to_end(key)
        else:
            self._memo[key] = make()
            while len(self._memo) > MEMO_SIZE:
                self._memo.popitem(last=False)
        return self._memo[key]

    @property
    def config(self):
        return self.hf_model.config

    @property
    def max_context(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 0) or 1 << 30)

    @property
    def base_name(self) -> str:
        """The name without its quantization ("smollm2-135m" for "smollm2-135m@int8"): what
        its trained artifacts are registered under (they fit the quantized weights too)."""
        return self.name.partition("@")[0]

    @property
    def quant(self) -> str:
        """The weight quantization asked for ("int8", "int4-g64", ...; "none")."""
        return self.kernels.get("quant", "none")

    @property
    def dtype(self) -> torch.dtype:
        return self.runner.dtype

    @property
    def device(self) -> torch.device:
        return self.runner.device

    def runtime(self) -> dict[str, str]:
        """Where and how this model runs: what result stats, bench and the server report."""
        layout = self.kernels.get("layout", "hf")
        return {"device": str(self.device), "dtype": dtype_name(self.dtype),
                "kernels": layout if isinstance(self.runner, llama.LlamaRunner) else "hf"}

    @functools.cached_property
    def vocab_fingerprint(self) -> str:
        """A digest of the tokenizer's token -> id map (computed once), to compare tokenizers."""
        items = sorted(self.tokenizer.get_vocab().items())
        return hashlib.sha256(json.dumps(items).encode()).hexdigest()

    def encode(self, prompt: str | Messages | list[int], chat: bool | None = None) -> list[int]:
        """Token ids of a prompt. Text or messages get the chat template when the tokenizer
        has one (unless chat=False); a list of ints is taken as ids already."""
        if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
        elif isinstance(prompt, (str, list)):
            use_chat = bool(getattr(self.tokenizer, "chat_template", None)) if chat is None else chat
            if isinstance(prompt, list) or use_chat:
                if not getattr(self.tokenizer, "chat_template", None):
                    raise TokenleapError(f"model {self.name!r} has no chat template: pass text or token ids")
                messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
                _check_messages(messages)
                if not any(m["content"].strip() for m in messages):
                    raise TokenleapError("the prompt is empty")
                ids = list(self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, return_dict=False))
            else:
                ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        else:
            raise TokenleapError(f"a prompt must be text, chat messages or token ids, got {type(prompt).__name__}")
        if not ids or (isinstance(prompt, str) and not prompt.strip()):
            raise TokenleapError("the prompt is empty")
        bad = [t for t in ids if not 0 <= t < self.runner.vocab_size]
        if bad:
            raise TokenleapError(f"token id {bad[0]} is outside the vocabulary (size {self.runner.vocab_size})")
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


def _check_messages(messages: list) -> None:
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise TokenleapError("chat messages must be dicts with string 'role' and 'content'")


def gguf_checkpoint(gguf_path: Path) -> Path:
    """Dequantise a GGUF file once into an fp32 safetensors checkpoint; return its directory.

    transformers flags a GGUF-loaded model as quantised and refuses to save it or change its
    dtype, so we write the dequantised state dict and a plain config ourselves."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    out = cache_home() / "checkpoints" / f"{gguf_path.stem}-{key}"
    if (out / "model.safetensors").is_file():
        return out
    from safetensors.torch import save_file

    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tied = getattr(model.config, "tie_word_embeddings", False)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["dtype"] = "float32"
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    model.generation_config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(out)  # atomic: a crash mid-conversion never leaves a half checkpoint behind
    return out


def locate(name_or_path: str) -> str:
    """A local checkpoint directory (or hub id) for a registry name (built-in or the user
    file's: `registry.lookup`), path or GGUF file."""
    entry = lookup(name_or_path)
    if entry is not None:
        found = entry.locate(Path(locate(entry.base))) if entry.base else entry.locate()
        return str(gguf_checkpoint(found) if found.suffix == ".gguf" else found)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise TokenleapError(f"GGUF file not found: {path}")
        return str(gguf_checkpoint(path))
    if path.exists():
        if not (path / "config.json").is_file():
            raise TokenleapError(f"{path} is not a Hugging Face model directory (no config.json)")
        return str(path)
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path or "/" not in name_or_path:
        try:
            known = ", ".join(sorted(entries()))
        except TokenleapError:  # a malformed user file: `tokenleap models` says what is wrong
            known = ", ".join(sorted(REGISTRY))
        raise TokenleapError(f"unknown model {name_or_path!r}: not a registry name ({known}) and no such path")
    return name_or_path  # a hub id: transformers fetches it (or fails clearly when offline)


def gguf_source(name_or_path: str) -> Path | None:
    """The GGUF file a model name or path was converted from (None: it came from no GGUF file);
    what llama.cpp runs beside us in the bench."""
    entry = lookup(name_or_path)
    if entry is not None:
        found = None if entry.base else entry.locate()
        return found if isinstance(found, Path) and found.suffix == ".gguf" else None
    path = Path(name_or_path).expanduser()
    return path if path.suffix == ".gguf" and path.is_file() else None


def not_a_causal_lm(source: str) -> str | None:
    """Why a checkpoint that failed to load as a causal LM is not one, when its config says so
    (an encoder-decoder such as T5), else None."""
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError):
        return None
    if getattr(config, "is_encoder_decoder", False):
        return (f"model type {config.model_type!r} is an encoder-decoder; tokenleap's methods (every one of them) "
                "run decoder-only causal LMs")
    return None


def load_model(name_or_path: str, dtype: str | torch.dtype | None = "auto", device: str | torch.device = "auto",
               runner: str = "auto", kernels_layout: str = "auto", quant: str = "none") -> Model:
    """Load a causal LM by registry name, local HF directory, .gguf file or hub id.

    dtype: "auto" (the fastest dtype this hardware computes natively: bf16 on CPUs with native
    bf16, else fp32; bf16/fp16 on CUDA), bf16, fp32 or fp16. device: auto, cpu, cuda[:N], mps.
    runner: "lean" (Llama-family fast path), "hf" (the model's own transformers forward) or
    "auto" (lean when supported). kernels_layout: the lean runner's weight layout, "auto"
    (measured once per machine and model shape, then cached) or one of `kernels.LAYOUTS`.
    quant: "none", "int8" (per output channel) or "int4" / "int4-gG" (groups of G = 32, 64, 128
    input columns): weight-only quantization of every matmul weight, the tied head included;
    activations then run by default in what the quantized kernels are fast with on the CPU
    (`kernels.quant_activations`: fp32 for tokenleap's int8 kernel, else bf16)."""
    if runner not in ("auto", "lean", "hf"):
        raise TokenleapError(f"unknown runner {runner!r}; use auto, lean or hf")
    quant_kind = kernels.parse_quant(quant)
    torch_device = resolve_device(device)
    if quant_kind[0] != "none" and (dtype is None or dtype == "auto") and torch_device.type == "cpu":
        torch_dtype = kernels.quant_activations(quant_kind[0], torch_device)
    else:
        torch_dtype = resolve_dtype(dtype, torch_device)
    if kernels_layout != "auto" and kernels_layout not in kernels.available_layouts(torch_dtype, torch_device):
        raise TokenleapError(f"kernel layout {kernels_layout!r} does not run here for {dtype_name(torch_dtype)} on "
                             f"{torch_device}; available: {', '.join(kernels.available_layouts(torch_dtype, torch_device))}")
    source = locate(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype).to(torch_device).eval()
    except (OSError, ValueError) as exc:
        why = not_a_causal_lm(source)
        raise TokenleapError(f"cannot load model {name_or_path!r}: {why or first_line(exc) or type(exc).__name__}"
                             ) from None
    for p in hf_model.parameters():
        p.requires_grad_(False)
    if runner == "lean" and not llama.supports(hf_model):
        raise TokenleapError(f"the lean runner does not cover model type {hf_model.config.model_type!r}; use runner='hf'")
    use_lean = runner == "lean" or (runner == "auto" and llama.supports(hf_model))
    subset_file = Path(source) / SUBSET_FILE
    head_subset = json.loads(subset_file.read_text()) if use_lean and subset_file.is_file() else None
    exec_runner: Runner = llama.LlamaRunner(hf_model, head_subset) if use_lean else HFRunner(hf_model)
    choice: dict[str, Any] = {}
    if quant_kind[0] != "none":
        choice = {"layout": quant_kind[0], "quant": quant, "measured": False, "reason": "quant asked for"}
        if use_lean:
            exec_runner.use_layout("dense", quant_kind)
        else:  # the transformers forward, its linears swapped for the quantized kernels
            kernels.quantize_linears(hf_model, *quant_kind, act_dtype=torch_dtype)
    elif use_lean:
        if kernels_layout == "auto":
            layout, choice = kernels.choose_layout(exec_runner.matrices(), torch_dtype, torch_device)
        else:
            layout, choice = kernels_layout, {"layout": kernels_layout, "measured": False, "reason": "asked for"}
        exec_runner.use_layout(layout)
    name = name_or_path if quant_kind[0] == "none" else f"{name_or_path}@{quant}"
    eos = hf_model.generation_config.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or [])
    if tokenizer.eos_token_id is not None:
        eos_ids.add(tokenizer.eos_token_id)
    return Model(name=name, hf_model=hf_model, tokenizer=tokenizer, runner=exec_runner,
                 eos_token_ids=frozenset(eos_ids), kernels=choice)


def self_draft(target: Model, quant: str, own_module: bool = False) -> Model:
    """A quantized view of the target's own weights as a draft (`draft="self:int8"`): same
    tokenizer, quantized matmuls and `kernels.quant_activations` on the CPU. No training; the target still
    judges every token, so lossless methods stay lossless.

    On the lean runner it shares the target's module (its runner quantizes the matmuls it
    reads). Otherwise, or with `own_module` (HF's assisted loop needs an assistant distinct from
    its target), it is a copy of the module with every linear swapped for a quantized one, run
    by the HF runner: any family the runners load gets one."""
    kind = kernels.parse_quant(quant)
    if kind[0] == "none":
        raise TokenleapError("a self-draft needs a quantization: self:int8, self:int4 or self:int4-gG")
    act = kernels.quant_activations(kind[0], target.device) if target.device.type == "cpu" else target.dtype
    runner: Runner
    if llama.supports(target.hf_model) and not own_module:
        module = target.hf_model
        runner = llama.LlamaRunner(module, dtype=act)
        runner.use_layout("dense", kind)
    else:
        module = copy.deepcopy(target.hf_model).to(act)
        kernels.quantize_linears(module, *kind, act_dtype=act)
        runner = HFRunner(module)
    return Model(name=f"self:{quant}", hf_model=module, tokenizer=target.tokenizer, runner=runner,
                 eos_token_ids=target.eos_token_ids,
                 kernels={"layout": kind[0], "quant": quant, "measured": False, "reason": "self-draft"})
