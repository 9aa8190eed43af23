"""Reference decoding by Hugging Face `generate`, for exactness tests."""

import torch

import tokenleap


def hf_greedy(model: tokenleap.Model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """Hugging Face `generate` greedy continuation (stops at EOS like tokenleap; EOS included)."""
    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = model.hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                      do_sample=False, eos_token_id=sorted(model.eos_token_ids),
                                      pad_token_id=sorted(model.eos_token_ids)[0])
    new = out[0, len(prompt_ids):].tolist()
    for i, t in enumerate(new):
        if t in model.eos_token_ids:
            return new[: i + 1]
    return new
