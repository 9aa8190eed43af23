"""Writing the user's model registry file (`registry.user_file()`): `register` adds or updates
one [models.NAME] table, as `tokenleap train ... --register NAME` does.

tomllib only reads, so `dump` writes the file's small format itself (tables of strings and of
option tables holding strings, numbers and booleans) and checks that tomllib reads back exactly
what was meant. A new entry is appended to the file's text (its comments and layout stay); an
updated one rewrites the file from its data (comments are lost then). Every write is atomic.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from ..errors import TokenleapError
from .registry import REGISTRY, NAME, parse, read_toml, user_file

BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def check_name(name: str) -> None:
    """`name` can be registered: an entry name, not a built-in one."""
    if not NAME.fullmatch(name):
        raise TokenleapError(f"cannot register {name!r}: a model name is letters, digits and . _ + - "
                             "(starting with a letter or digit)")
    if name in REGISTRY:
        raise TokenleapError(f"cannot register {name!r}: it is a built-in model's name; choose a new one "
                             f"(e.g. {name}-mine)")


def register(name: str, path: str | None, write: bool = True, **keys: str) -> Path:
    """Add or update [models.NAME] in the user file: `path` (None keeps the entry's own; a new
    entry needs one) and the other `keys` (draft=, lookahead=, exit_heads=, description=),
    keeping the file's other entries and the entry's other keys. With write=False only check
    that it would succeed (before a long training run). Returns the file."""
    check_name(name)
    file = user_file()
    old = file.read_bytes() if file.is_file() else b""
    data = read_toml(file, old)
    parse(file, data)  # a malformed file is never rewritten
    models = data.setdefault("models", {})
    fresh = name not in models
    entry = models.setdefault(name, {})
    if path is None and "path" not in entry:
        raise TokenleapError(f"cannot register {name!r}: a new entry needs the model's path")
    entry.update({} if path is None else {"path": path}, **keys)
    parse(file, data)  # and the result is valid too
    if not write:
        return file
    text = None
    if fresh and old:  # appended: the file's comments and layout stay
        prefix = old.decode("utf-8")
        text = prefix + ("" if prefix.endswith("\n") else "\n") + "\n" + "\n".join(_table(name, entry)) + "\n"
        if tomllib.loads(text) != data:  # e.g. `models` written as an inline table: rewrite it all
            text = None
    _write(file, text if text is not None else dump(data))
    return file


def dump(data: dict[str, Any]) -> str:
    """A user file's text from its data (`parse`'s format), checked to read back the same."""
    lines: list[str] = []
    for name, entry in data.get("models", {}).items():
        lines += _table(name, entry) + [""]
    text = "\n".join(lines)
    if tomllib.loads(text) != data:
        raise TokenleapError("internal error: the model registry file would not read back as written")
    return text


def _table(name: str, entry: dict[str, Any]) -> list[str]:
    head = f"models.{_key(name)}"
    lines = [f"[{head}]"] + [f"{_key(k)} = {_value(v)}" for k, v in entry.items() if k != "options"]
    options = entry.get("options")
    if options == {}:
        lines.append("options = {}")
    for method, values in (options or {}).items():
        lines += ["", f"[{head}.options.{_key(method)}]"] + [f"{_key(k)} = {_value(v)}" for k, v in values.items()]
    return lines


def _key(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    return '"' + "".join(ESCAPES.get(c) or (f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c)
                         for c in text) + '"'


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return _string(value)
    raise TokenleapError(f"cannot write {value!r} in the model registry file")


def _write(file: Path, text: str) -> None:
    """Replace `file` (through a symlink: its target) with `text` at once: a crash leaves the
    old file or the new one, never half of one."""
    file = Path(os.path.realpath(file))
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
