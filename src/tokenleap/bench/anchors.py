"""The HF anchors (`hf`, `hf-assisted`, `hf-pld`): Hugging Face's own `generate` loops (plain,
with an assistant model, with prompt lookup), run under the same warping, EOS and length as
tokenleap's methods and counted the same way."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import torch

from ..decoding.stats import DecodeStats
from ..decoding.warping import Sampling
from ..methods.pld import PLDOptions
from ..methods.sps import SPSOptions
from ..models.loading import Model
from ..planner import self_draft_of

if TYPE_CHECKING:
    from .variants import BenchMethod


@dataclass
class HFOptions(PLDOptions, SPSOptions):
    """The options the anchors take, declared by the methods they mirror (sps, pld)."""


# Anchors outside tokenleap: Hugging Face's own loops, and which of our options they take. An
# option means for them what it means for the method they mirror, by the same rules: gamma
# (hf-assisted: draft tokens per round, like sps); num_draft and max_ngram (hf-pld: HF's
# prompt_lookup_num_tokens and max_matching_ngram_size, like pld; defaults as pld's).
HF_METHODS: dict[str, tuple[str, ...]] = {"hf": (), "hf-assisted": ("gamma",), "hf-pld": ("num_draft", "max_ngram")}
HF_OPTIONS = HFOptions
# Every anchor and the options it takes: HF's loops and llama.cpp (bench/llamacpp.py, none).
ANCHORS: dict[str, tuple[str, ...]] = {**HF_METHODS, "llamacpp": ()}


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
    assistant's generation_config is restored afterwards. Without one, or with gamma=0 (auto,
    as sps's), HF's own adaptive schedule applies."""
    if draft is None or not gamma:
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
    """HF `generate` (plain, assisted or prompt lookup) with the same warping, EOS and length as
    tokenleap."""
    eos = sorted(target.eos_token_ids)
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, min_new_tokens=0, do_sample=not sampling.greedy,
                                  eos_token_id=eos or None, pad_token_id=eos[0] if eos else None,
                                  repetition_penalty=1.0)  # explicit, so a checkpoint's defaults cannot differ
    if not sampling.greedy:
        kwargs.update(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    assistant = draft if method.base == "hf-assisted" else None
    if assistant is not None and assistant.hf_model is target.hf_model:
        # A self-draft viewing the target's module: HF's loop needs a module of its own, so it
        # gets the same quantization as a quantized copy (made once, kept by the target).
        assistant = self_draft_of(target, assistant.name, own_module=True)
    if assistant is not None:
        kwargs["assistant_model"] = assistant.hf_model
    if method.base == "hf-pld":
        # HF's prompt lookup drafts a fixed number of tokens from its first (earliest) match;
        # pld adapts the length and takes the most recent match (docs/methods/pld.md).
        defaults = PLDOptions()
        kwargs.update(prompt_lookup_num_tokens=method.options.get("num_draft", defaults.num_draft),
                      max_matching_ngram_size=method.options.get("max_ngram", defaults.max_ngram))
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
    if assistant is not None or method.base == "hf-pld":
        # Every target forward commits one token of its own; the rest were accepted drafts.
        # HF does not expose how many drafts it proposed, so the acceptance rate stays unknown.
        stats.accepted = max(0, len(new) - stats.target_forwards)
    return new, stats
