"""The request planner: every check and every load a generation needs, before it starts.

`generate`, the bench harness and the server all plan through `plan_generation`, so a request
means the same everywhere: the same sampling, seed, length, stop-string and method-option
rules, the same model and draft resolution (the registry's default draft when none is given),
the same tokenizer-compatibility and context checks, the same error messages. Errors are
`RequestError`s naming the input at fault, which the server reports as its `param`.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .decoding.context import DecodeContext
from .decoding.stats import DecodeStats
from .decoding.stopping import StopCondition
from .decoding.warping import Sampling
from .errors import TokenleapError
from .methods import METHODS, MethodSpec, get_method
from .models.loading import Messages, Model, load_model, self_draft
from .models.registry import lookup
from .options import check_known, check_value, names

SEED_RANGE = (-(2 ** 63), 2 ** 64)  # what torch.Generator.manual_seed takes: [low, high)



class ModelCache:
    """Models loaded by name (`generate(model="...")`, the bench, the server), kept for reuse:
    at most `size`, the least recently used dropped first (a caller holding one keeps it alive).
    The planner owns the process's one instance, `LOADED`; `clear()` frees them all."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._models: OrderedDict[tuple[str, ...], Model] = OrderedDict()

    def get(self, name: str, dtype: str | torch.dtype | None, device: str | torch.device, quant: str) -> Model:
        key = (name, str(dtype or "auto"), str(device or "auto"), str(quant or "none"))
        if key in self._models:
            self._models.move_to_end(key)
        else:
            self._models[key] = load_model(name, dtype=dtype, device=device, quant=quant or "none")
            while len(self._models) > self.size:
                self._models.popitem(last=False)
        return self._models[key]

    def clear(self) -> None:
        self._models.clear()


LOADED = ModelCache()


class RequestError(TokenleapError):
    """Bad input in one part of a request. `param` names it in `plan_generation`'s terms
    (method, options, temperature, top_k, top_p, seed, max_new_tokens, stop, model, draft,
    prompt); `code` is set for kinds a client may act on (context_length_exceeded, unknown_method)."""

    def __init__(self, message: str, param: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param, self.code = param, code


@contextlib.contextmanager
def about(param: str, code: str | None = None) -> Iterator[None]:
    """Errors raised inside are about `param`."""
    try:
        yield
    except RequestError:
        raise
    except TokenleapError as exc:
        raise RequestError(str(exc), param, code) from None


@dataclass
class GenerationPlan:
    """A validated request, ready to decode: the method, what it is handed, where to stop."""

    spec: MethodSpec
    ctx: DecodeContext
    stop: StopCondition


def get_model(model: str | Model, dtype: str | torch.dtype | None = "auto",
              device: str | torch.device = "auto", quant: str = "none") -> Model:
    """A loaded model, reusing one loaded earlier in this process for the same name, dtype,
    device and quantization."""
    if isinstance(model, Model):
        return model
    return LOADED.get(model, dtype, device, quant)


SELF_DRAFT = "self:"


def self_draft_of(target: Model, spec: str, own_module: bool = False) -> Model:
    """`self:int8` / `self:int4[-gG]`: the target's own weights, quantized, as its draft (made
    once per target, quantization and kind, and kept by the target). `own_module`: a quantized
    copy of the module rather than a view of the target's (what HF's assisted loop can run)."""
    key = spec + ("/own-module" if own_module else "")
    if key not in target.derived:
        target.derived[key] = self_draft(target, spec.removeprefix(SELF_DRAFT), own_module)
    return target.derived[key]


def check_compatible(target: Model, draft: Model) -> None:
    """A draft must share the target's tokenizer: same vocabulary, same ids."""
    if target.runner.vocab_size != draft.runner.vocab_size or target.vocab_fingerprint != draft.vocab_fingerprint:
        raise TokenleapError(
            f"draft {draft.name!r} does not share the target's vocabulary "
            f"({draft.runner.vocab_size} vs {target.runner.vocab_size} logits, tokenizers differ)"
            if target.runner.vocab_size != draft.runner.vocab_size else
            f"draft {draft.name!r} has a different tokenizer from target {target.name!r}")


def load_draft(target: Model, draft: str | Model | None, *, dtype: str | torch.dtype | None = "auto",
               device: str | torch.device = "auto", registry_draft: bool = True) -> Model | None:
    """The draft model: `draft`, else (with `registry_draft`) the target's default draft in the
    registry, else None; checked to share the target's tokenizer."""
    entry = lookup(target.name) if draft is None and registry_draft else None
    if entry is not None:
        draft = entry.default_draft
    if draft is None:
        return None
    if isinstance(draft, str) and draft.startswith(SELF_DRAFT):
        return self_draft_of(target, draft)
    draft_model = get_model(draft, dtype, device)
    check_compatible(target, draft_model)
    return draft_model


def registered_options(model: str | Model, method: str) -> dict[str, Any]:
    """The default options of `method` that the model's user registry entry sets (its
    [models.NAME.options.METHOD] tables, every one checked against its method's schema, with
    errors naming the file); {} for any other model. `generate` lays the caller's options over them."""
    entry = lookup(model.base_name if isinstance(model, Model) else model)
    if entry is None or not entry.options:
        return {}
    with about("options"):
        for name, values in entry.options.items():
            where = entry.where(f"options.{name}")
            if name not in METHODS:
                raise TokenleapError(f"{where}: unknown method {name!r}; available: {', '.join(METHODS)}")
            cls = METHODS[name].options
            check_known(values, names(cls), owner=where)
            for key, value in values.items():
                try:
                    check_value(cls, key, value, owner=f"method {name!r}")
                except TokenleapError as exc:
                    raise TokenleapError(f"{where}.{key}: {exc}") from None
    return dict(entry.options.get(method, {}))


def require_draft(method: str, draft: Model | None) -> Model:
    """`draft`, or the error for a method that needs one when there is none."""
    if draft is None:
        raise RequestError(f"method {method!r} needs a draft model: pass draft=... (--draft)", "draft")
    return draft


def check_seed(seed: Any) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool) or not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
        raise RequestError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}", "seed")
    return seed


def check_context(target: Model, prompt_ids: list[int], new_tokens: int = 1) -> None:
    """The prompt and `new_tokens` new tokens must fit the target's context (a generation
    stops at the context, so by default room for one new token is enough)."""
    if len(prompt_ids) + new_tokens > target.max_context:
        asked = f" and {new_tokens} new tokens" if new_tokens > 1 else ""
        raise RequestError(f"the prompt has {len(prompt_ids)} tokens{asked}; the model's context is "
                           f"{target.max_context}", "prompt" if len(prompt_ids) >= target.max_context
                           else "max_new_tokens", "context_length_exceeded")


def encode_prompt(target: Model, prompt: str | Messages | list[int], chat: bool | None = None) -> list[int]:
    """The prompt's token ids (chat template applied when the model has one, unless chat=False),
    checked to leave room in the context."""
    with about("prompt"):
        prompt_ids = target.encode(prompt, chat=chat)
    check_context(target, prompt_ids)
    return prompt_ids


def plan_generation(*, prompt: str | Messages | list[int], method: str, model: str | Model,
                    max_new_tokens: int, temperature: float, top_k: int, top_p: float, seed: int,
                    draft: str | Model | None = None, stop: str | list[str] | None = None,
                    chat: bool | None = None, dtype: str | torch.dtype | None = "auto",
                    device: str | torch.device = "auto", quant: str = "none", options: dict[str, Any] | None = None,
                    registry_draft: bool = True, whole_output_in_context: bool = False) -> GenerationPlan:
    """Validate a request and load what it needs, in the order errors are reported.

    draft: for methods that need one; "self:int8" / "self:int4" is a quantized view of the target;
    None takes the registry's default draft of the target unless `registry_draft` is False (the
    server resolved its draft once, at start). quant: the target's weight quantization.
    whole_output_in_context: the prompt plus max_new_tokens must fit the context (the server's
    contract, OpenAI's); otherwise only the prompt must, and generation stops at the context.
    """
    sampling = make_sampling(temperature, top_k, top_p)
    with about("method", "unknown_method"):
        spec = get_method(method)
    with about("options"):
        method_options = spec.make_options(options or {})
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens <= 0:
        raise RequestError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}", "max_new_tokens")
    check_seed(seed)
    stop_strings = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not isinstance(s, str) or not s for s in stop_strings):
        raise RequestError("stop strings must be non-empty strings", "stop")
    with about("model"):
        target = get_model(model, dtype, device, quant)
    draft_model = None
    if spec.needs_draft:
        with about("draft"):
            draft_model = require_draft(method, load_draft(target, draft, dtype=dtype, device=device,
                                                           registry_draft=registry_draft))
    prompt_ids = encode_prompt(target, prompt, chat)
    if whole_output_in_context:
        check_context(target, prompt_ids, max_new_tokens)
    stats = DecodeStats(method=method, prompt_tokens=len(prompt_ids), **target.runtime())
    ctx = DecodeContext(target=target, draft=draft_model, prompt_ids=prompt_ids, sampling=sampling,
                        generator=torch.Generator().manual_seed(seed), stats=stats,
                        max_new_tokens=max_new_tokens, options=method_options)
    return GenerationPlan(spec, ctx, StopCondition(max_new_tokens, target.eos_token_ids, stop_strings))


def make_sampling(temperature: float, top_k: int, top_p: float) -> Sampling:
    """Sampling settings, each checked alone first so that an error names its own parameter."""
    for param, value in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p)):
        with about(param):
            Sampling(**{param: value})
    return Sampling(temperature, top_k, top_p)
