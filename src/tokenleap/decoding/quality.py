"""Quality of generated text, measured under the target model itself.

- `perplexity`: how likely the target finds a continuation (T=1, untruncated).
- `law_pit` + `uniformity_pvalue`: whether a continuation was drawn from the target's warped
  law, token by token — the statistical form of "this method is lossless" on a real model.
- `top1_agreement`: how often a model (say, a quantized copy) would have chosen each token of
  another model's greedy answer, teacher-forced.
"""

from __future__ import annotations

import math

import torch

from ..errors import TokenleapError
from ..models.loading import Model
from .warping import Sampling, warp


def _runner_logits(model: Model, prompt_ids: list[int], token_ids: list[int]) -> torch.Tensor:
    """Logits [n, V] of the rows predicting each of the n tokens, teacher-forced in one forward
    through the model's own runner (its quantized weights, if any)."""
    runner = model.runner
    ids = torch.tensor([list(prompt_ids) + list(token_ids)], dtype=torch.long, device=runner.device)
    return runner.forward(runner.new_cache(1, ids.shape[1]), ids)[0, len(prompt_ids) - 1: -1]


def _continuation_logits(model: Model, prompt_ids: list[int], token_ids: list[int]) -> torch.Tensor:
    """Logits [n, V] of the rows that predict each of the n generated tokens: one forward over
    prompt + tokens, and only those rows are projected to the vocabulary."""
    if not prompt_ids:
        raise TokenleapError("scoring needs a non-empty prompt to condition on")
    if not token_ids:
        raise TokenleapError("scoring needs at least one generated token")
    ids = torch.tensor([list(prompt_ids) + list(token_ids)], dtype=torch.long, device=model.hf_model.device)
    n = len(token_ids)
    if model.quant != "none":
        # Quantized weights live in the runner (the HF module may hold the originals): score
        # the model that generated, through the runner.
        return _runner_logits(model, prompt_ids, token_ids).float().cpu()
    # Row i of the kept logits predicts token i; the extra last row (beyond the sequence) is dropped.
    return model.hf_model(input_ids=ids, use_cache=False, logits_to_keep=n + 1).logits[0, :n].float().cpu()


def _perplexity(logits: torch.Tensor, token_ids: list[int]) -> float:
    log_probs = torch.log_softmax(logits, dim=-1)
    return math.exp(-log_probs.gather(-1, torch.tensor(token_ids)[:, None]).mean().item())


def _pit(logits: torch.Tensor, token_ids: list[int], sampling: Sampling, generator: torch.Generator | None
         ) -> torch.Tensor:
    p = warp(logits, sampling).double()
    x = torch.tensor(token_ids)[:, None]
    p_x = p.gather(-1, x)[:, 0]
    # Mass ranked before x: likelier tokens, and equally likely ones with a smaller id.
    before = (p > p_x[:, None]) | ((p == p_x[:, None]) & (torch.arange(p.shape[-1]) < x))
    u = (p * before).sum(-1) + torch.rand(len(token_ids), generator=generator, dtype=torch.float64) * p_x
    return torch.where(p_x > 0, u, torch.full_like(u, float("nan")))


@torch.inference_mode()
def top1_agreement(model: Model, prompt_ids: list[int], answer_ids: list[int]) -> tuple[int, int]:
    """(positions where `model`'s argmax equals the answer's token, positions), teacher-forced
    over prompt + answer in one forward through the model's own runner (so a quantized model is
    judged with its quantized weights)."""
    if not prompt_ids or not answer_ids:
        return 0, 0
    chosen = _runner_logits(model, prompt_ids, answer_ids).argmax(-1).cpu()
    return int((chosen == torch.tensor(answer_ids)).sum()), len(answer_ids)


@torch.inference_mode()
def perplexity(model: Model, prompt_ids: list[int], token_ids: list[int]) -> float:
    """Perplexity of `token_ids` as a continuation of `prompt_ids` under `model` at T=1:
    exp(-mean over generated positions of log p(token | prompt, earlier tokens)), untruncated
    (no top-k/top-p)."""
    return _perplexity(_continuation_logits(model, prompt_ids, token_ids), token_ids)


@torch.inference_mode()
def law_pit(model: Model, prompt_ids: list[int], token_ids: list[int], sampling: Sampling,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Randomised probability integral transform of each generated token under `model`'s
    warped law given the prompt and the earlier tokens: u_t = F_t(x_t^-) + v_t * p_t(x_t),
    v_t ~ U(0, 1), where p_t = warp(logits_t) and F_t(x^-) is the mass of the tokens ranked
    before x, most likely first (ties by id).

    If the tokens were drawn from that law, token by token, the u_t are independent U(0, 1)
    whatever the prompt and the length: a check that a method preserves the target's
    distribution over whole generations, not just the first tokens. Ranking most likely first
    makes it sensitive to what goes wrong in practice: a method that favours likely tokens (too
    low a temperature, MTAD's likelihood-seeking blocks) piles u up near 0. A token the law
    gives no probability gets NaN (it cannot have come from it). `generator` must not be the
    one the method sampled with: v_t has to be independent of the draws."""
    if sampling.greedy:
        raise TokenleapError("law_pit needs a sampling law (temperature > 0)")
    return _pit(_continuation_logits(model, prompt_ids, token_ids), token_ids, sampling, generator)


@torch.inference_mode()
def score_continuation(model: Model, prompt_ids: list[int], token_ids: list[int], sampling: Sampling,
                       generator: torch.Generator | None = None, reference: Model | None = None
                       ) -> tuple[float, list[float]]:
    """(perplexity, law_pit values): what the benchmark records per sample. The law is the
    generating model's (a method is lossless against the model it was given); the perplexity
    is under `reference` when given (the unquantized model, for a quantized one), else under
    `model` too, from the same forward."""
    logits = _continuation_logits(model, prompt_ids, token_ids)
    ppl_logits = logits if reference is None or reference is model else \
        _continuation_logits(reference, prompt_ids, token_ids)
    return _perplexity(ppl_logits, token_ids), _pit(logits, token_ids, sampling, generator).tolist()


def uniformity_pvalue(u: list[float]) -> tuple[float, float]:
    """(p-value, fraction of NaN) of a Kolmogorov-Smirnov test of the non-NaN values against
    U(0, 1), with the asymptotic Kolmogorov law and Stephens' small-sample correction (within
    0.02 of the exact p-value at n = 30, closer as n grows). NaNs are tokens outside the law's
    support: reported, not tested."""
    values = sorted(x for x in u if not math.isnan(x))
    n = len(values)
    if n == 0:
        return float("nan"), 1.0 if u else 0.0
    d = max(max((i + 1) / n - x, x - i / n) for i, x in enumerate(values))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    if lam < 0.2:  # the series converges slowly there; the p-value is 1 to 5 decimals
        return 1.0, 1 - n / len(u)
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return min(1.0, max(0.0, p)), 1 - n / len(u)
