"""Quality of generated text, measured under the target model itself."""

from __future__ import annotations

import math

import torch

from ..errors import TokenleapError
from ..models.loading import Model


@torch.inference_mode()
def perplexity(model: Model, prompt_ids: list[int], token_ids: list[int]) -> float:
    """Perplexity of `token_ids` as a continuation of `prompt_ids` under `model` at T=1.

    Untruncated (no top-k/top-p): exp(-mean over generated positions of log p(token | prompt,
    earlier tokens)). One forward over prompt + tokens; only the rows that predict generated
    tokens are projected to the vocabulary."""
    if not prompt_ids:
        raise TokenleapError("perplexity needs a non-empty prompt to condition on")
    if not token_ids:
        raise TokenleapError("perplexity needs at least one generated token")
    ids = torch.tensor([list(prompt_ids) + list(token_ids)], dtype=torch.long, device=model.hf_model.device)
    n = len(token_ids)
    # Row i of the kept logits predicts token i; the extra last row (predicting beyond the
    # sequence) is dropped.
    logits = model.hf_model(input_ids=ids, use_cache=False, logits_to_keep=n + 1).logits[0, :n]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    targets = ids[0, len(prompt_ids):]
    mean = log_probs.gather(-1, targets[:, None]).mean().item()
    return math.exp(-mean)
