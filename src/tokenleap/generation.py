"""`tokenleap.generate`: one entry point for every method, with streaming and statistics."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from .decoding.stats import DecodeStats
from .decoding.stopping import TextStream
from .models.loading import Messages, Model
from .models.registry import DEFAULT_MODEL
from .planner import GenerationPlan, get_model, plan_generation, registered_options

__all__ = ["GenerationResult", "GenerationStream", "generate", "get_model", "run"]


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


def run(plan: GenerationPlan) -> Iterator[str | GenerationResult]:
    """Drive a method: collect its blocks, stop exactly where the plan's StopCondition says,
    stream text, and finish with the GenerationResult."""
    spec, ctx, stop = plan.spec, plan.ctx, plan.stop
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
             dtype: str | torch.dtype | None = "auto", device: str = "auto", quant: str = "none",
             **options: Any) -> GenerationResult | GenerationStream:
    """Generate a continuation of `prompt` with a decoding method.

    prompt: text (the chat template is applied when the model has one, unless chat=False),
      chat messages, or token ids. method: "ar", "sps", ... (see tokenleap.METHODS); its options
      (e.g. gamma=4) are keyword arguments. temperature=0 is greedy. dtype ("auto": the fastest
      this hardware computes natively) and device ("auto", "cpu", "cuda[:N]", "mps") apply when
      `model`/`draft` are names rather than loaded `Model`s; so does quant ("int8", "int4",
      "int4-g64": weight-only quantization of the target). draft="self:int8" (or "self:int4")
      drafts with a quantized view of the target's own weights. With stream=True a
      GenerationStream is returned: iterate it for text pieces, then read `.result`. A model
      from the user's registry file brings its default method options; keywords override them.
    """
    options = {**registered_options(model, method), **options}
    plan = plan_generation(prompt=prompt, method=method, model=model, draft=draft, max_new_tokens=max_new_tokens,
                           temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop=stop, chat=chat,
                           dtype=dtype, device=device, quant=quant, options=options)
    pieces = run(plan)
    if stream:
        return GenerationStream(pieces)
    result = None
    for piece in pieces:
        if isinstance(piece, GenerationResult):
            result = piece
    return result
