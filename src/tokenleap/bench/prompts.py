"""Benchmark prompts: reading Spec-Bench JSONL, choosing which prompts run, and encoding them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import TokenleapError
from ..models.loading import Model
from ..planner import encode_prompt


@dataclass
class Prompt:
    index: int
    question_id: Any
    category: str
    text: str


def load_prompts(path: str | Path, limit: int | None = None, categories: list[str] | None = None) -> list[Prompt]:
    """Spec-Bench rows (question_id, category, turns); the first turn is the prompt.

    --limit takes prompts round-robin over categories (in file order) so a short run still
    covers every category instead of only the first one in the file."""
    rows = _read_jsonl(Path(path))
    if categories:
        known = list(dict.fromkeys(r["category"] for r in rows))
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise TokenleapError(f"unknown category {unknown[0]!r} in {path}; available: {', '.join(known)}")
        rows = [r for r in rows if r["category"] in categories]
    if limit is not None:
        if limit < 1:
            raise TokenleapError(f"--limit must be >= 1, got {limit}")
        rows = _round_robin(rows)[:limit]
    if not rows:
        raise TokenleapError(f"no prompts to run in {path}")
    return [Prompt(i, r["question_id"], r["category"], r["turns"][0]) for i, r in enumerate(rows)]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise TokenleapError(f"prompt file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise TokenleapError(f"{path}, line {number}: bad JSON ({exc.msg})") from None
            turns = row.get("turns") if isinstance(row, dict) else None
            if (not isinstance(turns, list) or not turns or not isinstance(turns[0], str)
                    or "question_id" not in row or not isinstance(row.get("category"), str)):
                raise TokenleapError(f"{path}, line {number}: need question_id, category (text) "
                                     "and turns (a non-empty list of text)")
            rows.append(row)
    return rows


def _round_robin(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_category: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    queues = list(by_category.values())
    out = []
    for i in range(max(len(q) for q in queues)):
        out += [q[i] for q in queues if i < len(q)]
    return out


def encode_prompts(target: Model, prompts: list[Prompt]) -> dict[int, list[int] | str]:
    """Token ids per prompt (chat template applied), or the reason a prompt cannot be run."""
    ids: dict[int, list[int] | str] = {}
    for p in prompts:
        try:
            ids[p.index] = encode_prompt(target, p.text)
        except TokenleapError as exc:
            ids[p.index] = f"TokenleapError: {exc}"
    return ids
