"""One schema for every options dataclass: the methods' options and the trainers' configs.

Each field declares, once, its type (the annotation), default, help and accepted values:

    gamma: int = option(4, "draft tokens per round (at most)", minimum=1)

Everything that reads options goes through this module: `generate`'s keywords and the
server's `tokenleap` block (`build`), command-line flags and bench variants such as
`sps@gamma=2` (`parse_text`, then `build`), and the help text of every flag (`describe`).
So each rule is checked in one place, with one message. Rules that no single field can
state (e.g. pass: candidates > 1 needs scheme one-call) go in the class's `check()`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Mapping

from .errors import TokenleapError

KINDS = (bool, int, float, str)
NOUNS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def option(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None, below: float | None = None, choices: tuple | None = None) -> Any:
    """A dataclass field with its default, help and accepted values: `minimum`/`maximum` are
    inclusive bounds, `above`/`below` exclusive ones, `choices` the only values allowed."""
    rules = {"minimum": minimum, "maximum": maximum, "above": above, "below": below, "choices": choices}
    return dataclasses.field(default=default, metadata={"help": help, **rules})


class Options:
    """Base of an options dataclass: `validate()` checks every field, then `check()`."""

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            _check(f, kind(type(self), f.name), getattr(self, f.name), type(self).__name__)
        self.check()

    def check(self) -> None:
        """Rules beyond single fields' declarations (none by default)."""


@functools.cache
def kinds(cls: type) -> dict[str, type]:
    """Field name -> its type (bool, int, float or str), from the annotations."""
    hints = typing.get_type_hints(cls)
    out = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    for name, k in out.items():
        if k not in KINDS:
            raise TypeError(f"{cls.__name__}.{name}: an option is one of {KINDS}, not {k}")
    return out


def kind(cls: type, name: str) -> type | None:
    """The type of option `name` of `cls`; None when `cls` has no such option."""
    return kinds(cls).get(name)


def names(cls: type) -> tuple[str, ...]:
    return tuple(kinds(cls))


def describe(cls: type, name: str) -> str:
    """The values option `name` accepts, in words: "an integer >= 1", "one of kl, ce", ..."""
    return _accepts(_field(cls, name), kind(cls, name))


def help_text(cls: type, name: str) -> str:
    """A flag's help: what the option is, what it accepts and its default."""
    f = _field(cls, name)
    return f"{f.metadata.get('help', '')} ({describe(cls, name)}; default {f.default!r})"


def parse_text(option_kind: type | None, text: str) -> Any:
    """A value typed as text (a command-line flag, a bench variant's `key=value`) as the
    option's type. Text that is not one is returned as is, so that `build` refuses it with
    its usual message; a string option keeps the text (a path may look like a number)."""
    if option_kind is bool:
        return {"true": True, "false": False}.get(text.lower(), text)
    if option_kind in (int, float):
        for number in (int, float):  # "4.0" for an int option is 4.0, which `build` takes as 4
            try:
                return number(text)
            except ValueError:
                pass
    return text


def check_known(values: Mapping[str, Any], accepted: tuple[str, ...], owner: str) -> None:
    unknown = sorted(set(values) - set(accepted))
    if unknown:
        raise TokenleapError(f"{owner} has no option {unknown[0]!r} (its options: {', '.join(sorted(accepted)) or 'none'})")


def check_value(cls: type, name: str, value: Any, owner: str) -> Any:
    """`value` for option `name` of `cls`, checked; an integral float becomes an int for an
    int option, an int a float for a float option (JSON and Python write them either way)."""
    k = kind(cls, name)
    if k is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if k is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    _check(_field(cls, name), k, value, owner)
    return value


def build(cls: type, values: Mapping[str, Any], owner: str) -> Any:
    """An instance of options class `cls` from keyword values: unknown options, wrong types,
    values out of range and broken cross-field rules are errors (a TokenleapError each)."""
    check_known(values, names(cls), owner)
    options = cls(**{name: check_value(cls, name, value, owner) for name, value in values.items()})
    options.check()
    return options


# -- the rules: one message each ------------------------------------------------------------
def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def _is_kind(value: Any, k: type) -> bool:
    if k is bool or isinstance(value, bool):  # True is an int to Python, not to an option
        return k is bool and isinstance(value, bool)
    return isinstance(value, (int, float) if k is float else k)


def _check(f: dataclasses.Field, k: type, value: Any, owner: str) -> None:
    if not _is_kind(value, k):
        raise TokenleapError(f"option {f.name!r} of {owner} must be {k.__name__}, got {value!r}")
    meta = f.metadata
    if meta.get("choices") and value not in meta["choices"]:
        raise TokenleapError(f"unknown {f.name} {value!r}; use one of {', '.join(map(str, meta['choices']))}")
    lo, above, hi, below = (meta.get(b) for b in ("minimum", "above", "maximum", "below"))
    inside = ((lo is None or value >= lo) and (above is None or value > above)  # NaN is inside no bound
              and (hi is None or value <= hi) and (below is None or value < below))
    if not inside:
        raise TokenleapError(f"{f.name} must be {_accepts(f, k)}, got {value!r}")


def _accepts(f: dataclasses.Field, k: type) -> str:
    meta, noun = f.metadata, NOUNS[k]
    if meta.get("choices"):
        return "one of " + ", ".join(map(str, meta["choices"]))
    lo, above, hi, below = (meta.get(b) for b in ("minimum", "above", "maximum", "below"))
    low = f"[{lo}" if lo is not None else f"({above}" if above is not None else None
    high = f"{hi}]" if hi is not None else f"{below})" if below is not None else None
    if low and high:
        return f"{noun} in {low}, {high}"
    if low:
        return f"{noun} {'>=' if lo is not None else '>'} {low[1:]}"
    if high:
        return f"{noun} {'<=' if hi is not None else '<'} {high[:-1]}"
    return noun
