"""`tokenleap.generate`: one entry point for every method, with streaming and statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .decoding.context import DecodeContext
from .decoding.stats import DecodeStats
from .decoding.stopping import StopCondition, TextStream
from .decoding.warping import Sampling
from .errors import TokenleapError
from .methods import MethodSpec, get_method
from .models.loading import Messages, Model, load_model
from .models.registry import DEFAULT_MODEL, REGISTRY

_LOADED: dict[tuple[str, str], Model] = {}


def get_model(model: str | Model, dtype: str | torch.dtype | None = "auto",
              device: str | torch.device = "auto") -> Model:
    """A loaded model, reusing one loaded earlier in this process for the same name, dtype and device."""
    if isinstance(model, Model):
        return model
    key = (model, str(dtype or "auto"), str(device or "auto"))
    if key not in _LOADED:
        _LOADED[key] = load_model(model, dtype=dtype, device=device)
    return _LOADED[key]


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]  # generated ids (EOS included when generated)
    prompt_ids: list[int]
    finish_reason: str  # "eos", "length" or "stop"
    stats: DecodeStats

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "token_ids": self.token_ids, "prompt_tokens": len(self.prompt_ids),
                "finish_reason": self.finish_reason, "stats": self.stats.to_dict()}


class GenerationStream:
    """Iterate to receive text pieces as they settle; `.result` is set once iteration ends."""

    def __init__(self, pieces: Iterator[str | GenerationResult]) -> None:
        self._pieces = pieces
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            if isinstance(piece, GenerationResult):
                self.result = piece
            elif piece:
                yield piece

    def close(self) -> None:
        self._pieces.close()


def check_compatible(target: Model, draft: Model) -> None:
    """A draft must share the target's tokenizer: same vocabulary, same ids."""
    if target.runner.vocab_size != draft.runner.vocab_size or target.vocab_fingerprint != draft.vocab_fingerprint:
        raise TokenleapError(
            f"draft {draft.name!r} does not share the target's vocabulary "
            f"({draft.runner.vocab_size} vs {target.runner.vocab_size} logits, tokenizers differ)"
            if target.runner.vocab_size != draft.runner.vocab_size else
            f"draft {draft.name!r} has a different tokenizer from target {target.name!r}")


def prepare(prompt: str | Messages | list[int], method: str, model: str | Model, draft: str | Model | None,
            max_new_tokens: int, sampling: Sampling, seed: int, stop: str | list[str] | None,
            chat: bool | None, dtype: str | torch.dtype | None, options: dict[str, Any],
            device: str | torch.device = "auto") -> tuple[MethodSpec, DecodeContext, StopCondition]:
    """Validate everything and load what is needed, before any decoding starts."""
    spec = get_method(method)
    method_options = spec.make_options(options)
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens <= 0:
        raise TokenleapError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or not -(2 ** 63) <= seed < 2 ** 64:
        raise TokenleapError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}")
    stop_strings = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if any(not isinstance(s, str) or not s for s in stop_strings):
        raise TokenleapError("stop strings must be non-empty strings")
    target = get_model(model, dtype, device)
    draft_model = None
    if spec.needs_draft:
        if draft is None:
            default = REGISTRY[target.name].default_draft if target.name in REGISTRY else None
            if default is None:
                raise TokenleapError(f"method {method!r} needs a draft model: pass draft=... (--draft)")
            draft = default
        draft_model = get_model(draft, dtype, device)
        check_compatible(target, draft_model)
    prompt_ids = target.encode(prompt, chat=chat)
    if len(prompt_ids) >= target.max_context:
        raise TokenleapError(
            f"the prompt has {len(prompt_ids)} tokens; the model's context is {target.max_context}")
    stats = DecodeStats(method=method, prompt_tokens=len(prompt_ids), **target.runtime())
    ctx = DecodeContext(target=target, draft=draft_model, prompt_ids=prompt_ids, sampling=sampling,
                        generator=torch.Generator().manual_seed(seed), stats=stats,
                        max_new_tokens=max_new_tokens, options=method_options)
    return spec, ctx, StopCondition(max_new_tokens, target.eos_token_ids, stop_strings)


def run(spec: MethodSpec, ctx: DecodeContext, stop: StopCondition) -> Iterator[str | GenerationResult]:
    """Drive a method: collect its blocks, stop exactly where the StopCondition says, stream text,
    and finish with the GenerationResult."""
    target = ctx.target
    stream = TextStream(target.decode, stop.stop_strings)
    new_ids: list[int] = []
    reason = None
    start = time.perf_counter()
    blocks = spec.decode(ctx)
    try:
        for block in blocks:
            if ctx.stats.first_token_s is None:
                ctx.stats.first_token_s = time.perf_counter() - start
            text = None
            for token in block:
                new_ids.append(token)
                text = stream.text(new_ids) if stop.stop_strings else None
                reason = stop.check(new_ids, text)
                if reason:
                    break
            if reason:
                break
            # With stop strings the text of this block was decoded already.
            yield stream.settled(text if text is not None else stream.text(new_ids))
    finally:
        # Also when the consumer stops early (a cancelled stream): the stats stay truthful.
        blocks.close()
        ctx.stats.wall_s = time.perf_counter() - start
        ctx.stats.new_tokens = len(new_ids)
    text = stop.cut_text(target.decode(new_ids))
    yield stream.flush(text)
    yield GenerationResult(text=text, token_ids=new_ids, prompt_ids=ctx.prompt_ids,
                           finish_reason=reason or "length", stats=ctx.stats)


def generate(prompt: str | Messages | list[int], method: str = "ar", model: str | Model = DEFAULT_MODEL,
             draft: str | Model | None = None, max_new_tokens: int = 128, temperature: float = 0.0,
             top_k: int = 0, top_p: float = 1.0, seed: int = 0, stream: bool = False,
             stop: str | list[str] | None = None, chat: bool | None = None,
             dtype: str | torch.dtype | None = "auto", device: str = "auto",
             **options: Any) -> GenerationResult | GenerationStream:
    """Generate a continuation of `prompt` with a decoding method.

    prompt: text (the chat template is applied when the model has one, unless chat=False),
      chat messages, or token ids. method: "ar", "sps", ... (see tokenleap.METHODS); its options
      (e.g. gamma=4) are keyword arguments. temperature=0 is greedy. dtype ("auto": the fastest
      this hardware computes natively) and device ("auto", "cpu", "cuda[:N]", "mps") apply when
      `model`/`draft` are names rather than loaded `Model`s. With stream=True a
      GenerationStream is returned: iterate it for text pieces, then read `.result`.
    """
    sampling = Sampling(temperature, top_k, top_p)
    spec, ctx, stop_condition = prepare(prompt, method, model, draft, max_new_tokens, sampling, seed,
                                        stop, chat, dtype, options, device)
    pieces = run(spec, ctx, stop_condition)
    if stream:
        return GenerationStream(pieces)
    result = None
    for piece in pieces:
        if isinstance(piece, GenerationResult):
            result = piece
    return result
