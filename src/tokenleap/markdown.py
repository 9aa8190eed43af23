"""Markdown cells and tables: what the bench report and methods' own report sections print."""

from __future__ import annotations

from typing import Any


def fmt(value: Any, digits: int = 2) -> str:
    """A cell: "–" for None, floats to `digits` places, anything else as str."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
