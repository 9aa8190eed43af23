"""The llama.cpp anchor (`llamacpp`): llama-cpp-python running the GGUF file the model came
from, beside tokenleap's methods in the same run.

It gets what every method gets: the same prompt token ids (our tokenizer and chat template; a
GGUF's vocabulary is the one our checkpoint was converted with), the same sampling (greedy, or
temperature / top-k / top-p with min-p off), the same maximum length, EOS and thread count, and
its tokens are counted the same way (ids, cut at the first EOS inclusive). Its weights are the
GGUF's own (e.g. Q4_1), so its output is compared for speed, not token for token.

llama-cpp-python is an optional extra (`pip install tokenleap[llamacpp]`, a ~12 min source
build on 2 cores): without it, or for a model that did not come from a GGUF file, the bench
reports the column as not measured and runs everything else.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..decoding.stats import DecodeStats
from ..decoding.warping import Sampling
from ..errors import TokenleapError
from ..models.loading import Model, gguf_source

if TYPE_CHECKING:
    from .variants import BenchMethod

NAME = "llamacpp"
CONTEXT = 4096  # llama.cpp's context: room for a Spec-Bench prompt and its answer


def unavailable(target: Model) -> str | None:
    """Why the anchor cannot run for this target (None: it can)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (pip install 'tokenleap[llamacpp]')"
    if gguf_source(target.base_name) is None:
        return f"model {target.base_name!r} did not come from a GGUF file"
    return None


def file_type(path: Path) -> str:
    """The GGUF's weight type as llama.cpp names it ("q4_1", "f16", ...)."""
    import gguf

    field = gguf.GGUFReader(str(path)).get_field("general.file_type")
    if field is None:
        return "gguf"
    name = gguf.LlamaFileType(int(field.contents())).name  # e.g. MOSTLY_Q4_1
    return name.removeprefix("MOSTLY_").lower()


def load(target: Model) -> tuple[Any, str]:
    """The llama.cpp model for `target` (loaded once per target and thread count) and its weight type."""
    why = unavailable(target)
    if why:
        raise TokenleapError(f"llamacpp: not measured: {why}")
    path = gguf_source(target.base_name)
    threads = torch.get_num_threads()

    def make() -> tuple[Any, str]:
        from llama_cpp import Llama

        context = min(CONTEXT, target.max_context)
        return Llama(model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                     seed=0, verbose=False), file_type(path)

    return target.memo(("llamacpp", str(path), threads), make)


def llamacpp_generate(method: BenchMethod, target: Model, prompt_ids: list[int], max_new_tokens: int,
                      sampling: Sampling, seed: int) -> tuple[list[int], DecodeStats]:
    """One generation by llama.cpp, counted like ours: one forward per new token (the first one
    is the prompt's)."""
    llm, weights = load(target)
    if len(prompt_ids) + max_new_tokens > llm.n_ctx():
        raise TokenleapError(f"llamacpp: the prompt ({len(prompt_ids)} tokens) and {max_new_tokens} new tokens "
                             f"exceed its context of {llm.n_ctx()}")
    llm.reset()  # forget the previous prompt: no prefix reuse between generations (ours has none)
    llm.set_seed(seed & 0xFFFFFFFF)
    if sampling.greedy:
        settings = dict(temp=0.0, top_k=1, top_p=1.0)
    else:
        settings = dict(temp=sampling.temperature, top_k=sampling.top_k or 0, top_p=sampling.top_p)
    new: list[int] = []
    for token in llm.generate(prompt_ids, min_p=0.0, typical_p=1.0, repeat_penalty=1.0, reset=True, **settings):
        new.append(int(token))
        if token in target.eos_token_ids or len(new) >= max_new_tokens:
            break
    stats = DecodeStats(method=method.name, prompt_tokens=len(prompt_ids), new_tokens=len(new),
                        target_forwards=len(new), device="cpu", dtype=weights, kernels="llama.cpp")
    return new, stats

