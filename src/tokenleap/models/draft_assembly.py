"""A trained draft artifact (`tokenleap train draft --export`) made into an ordinary HF checkpoint
on its target, for any family.

The artifact holds the draft's own weights only (its layers, final norm, and whatever else of the
target's family it trained: GPT-2's position embeddings, OPT's projections) plus its config, a
config of the target's own family with fewer layers. The token embeddings and output head are
the target's (`shared_weights`: frozen in training, never exported), so the assembly takes
them from the target's checkpoint through transformers' own loading (its key conventions and
renames included, e.g. GPT-NeoX's `embed_out`): the target checkpoint is loaded under the
draft's config, which reads only the first layers of it, and the artifact's weights then
replace everything but the shared ones.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from ..errors import TokenleapError, first_line


def shared_weights(model: torch.nn.Module) -> set[str]:
    """State-dict keys of the weights a draft shares with its target: the token embeddings and
    the output head (found as the model's own input and output embeddings; a tied head is one
    tensor under two keys, both listed)."""
    shared = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings())
              for p in (m.weight, getattr(m, "bias", None)) if p is not None}
    return {k for k, v in model.state_dict(keep_vars=True).items() if id(v) in shared}


def assemble_draft(artifact: Path, target_dir: Path, out: Path, subset_file: str) -> Path:
    """Build an ordinary HF checkpoint directory at `out` from a draft artifact (its weights,
    config and vocabulary subset) plus the target's embeddings and head, tokenizer and
    generation config; `out` is returned as is when already built. The vocabulary subset is
    written beside it as `subset_file` (the name the loader looks for: `registry.SUBSET_FILE`)."""
    artifact, target_dir, out = Path(artifact), Path(target_dir), Path(out)
    if (out / "config.json").is_file():
        return out
    weights = load_file(str(artifact / "draft_layers.safetensors"))
    dtype = next(iter(weights.values())).dtype
    config = AutoConfig.from_pretrained(artifact)
    target_type = AutoConfig.from_pretrained(target_dir).model_type
    if target_type != config.model_type:
        raise TokenleapError(f"the draft in {artifact} is of model type {config.model_type!r}; its target "
                             f"{target_dir} is {target_type!r}")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)  # the target's later layers are left unread on purpose
    try:
        draft, info = AutoModelForCausalLM.from_pretrained(target_dir, config=config, dtype=dtype,
                                                           output_loading_info=True)
        missing, unexpected = draft.load_state_dict(weights, strict=False)
    except (OSError, ValueError, RuntimeError) as exc:
        raise TokenleapError(f"cannot assemble the draft in {artifact} on {target_dir}: {first_line(exc)}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    shared = shared_weights(draft)
    # Every weight must come from one side: the artifact, or (the shared ones) the target.
    unfilled = (set(info["missing_keys"]) - set(weights)) | (set(missing) - shared)
    if unexpected or unfilled:
        raise TokenleapError(f"the draft in {artifact} does not fit its target {target_dir} "
                             f"({'unexpected' if unexpected else 'missing'} weights: "
                             f"{sorted(unexpected or unfilled)[0]}, ...)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    draft.save_pretrained(tmp)
    for name in os.listdir(target_dir):
        if name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
            shutil.copy(target_dir / name, tmp / name)
    shutil.copy(artifact / "vocab_subset.json", tmp / subset_file)
    tmp.rename(out)  # atomic: never a half-built checkpoint
    return out

