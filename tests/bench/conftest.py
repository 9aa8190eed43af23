"""Tiny random models and a tiny Spec-Bench-style prompt file for the bench tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tokenleap.models.tiny import make_tiny_llama

VOCAB = 32

# Two categories, prompts of words "w2".."w31"; "w7" appears in exactly one prompt (question 2),
# which lets a test method fail on that prompt only.
PROMPTS = [
    {"question_id": 1, "category": "alpha", "turns": ["w3 w4 w5", "second turn is ignored"]},
    {"question_id": 2, "category": "alpha", "turns": ["w6 w7 w8"]},
    {"question_id": 3, "category": "beta", "turns": ["w9 w10 w11 w12"]},
    {"question_id": 4, "category": "beta", "turns": ["w13 w14"]},
]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """target; an unrelated draft (low acceptance); and a copy of the target in its own
    directory (a draft that agrees with the target everywhere, loaded as a separate model)."""
    root = tmp_path_factory.mktemp("bench-models")
    target = make_tiny_llama(root / "target", vocab_size=VOCAB, seed=0)
    draft = make_tiny_llama(root / "draft", vocab_size=VOCAB, seed=1, num_layers=1)
    twin = Path(shutil.copytree(target, root / "twin"))
    return {"target": target, "draft": draft, "twin": twin}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def prompt_rows() -> list[dict]:
    return [dict(row) for row in PROMPTS]


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)


@pytest.fixture
def bench(tiny_models, prompts_file, tmp_path):
    """Run `tokenleap bench` on the tiny target; returns (exit code, loaded results or None)."""
    from tokenleap.cli import main

    def run(*args: str, out: str = "out", draft: str | None = "draft", n: int = 10) -> tuple[int, dict | None]:
        argv = ["bench", "--prompts", str(prompts_file), "--model", str(tiny_models["target"]),
                "--dtype", "fp32", "--max-new-tokens", str(n), "--out", str(tmp_path / out), "--no-progress"]
        if draft:
            argv += ["--draft", str(tiny_models[draft])]
        code = main(argv + list(args))
        results_path = tmp_path / out / "results.json"
        return code, json.loads(results_path.read_text()) if results_path.exists() else None

    return run
