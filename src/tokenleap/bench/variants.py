"""Which methods a benchmark runs: method names and `name@key=value+...` variants parsed into
BenchMethods, each given only the options it takes (checked by the one options schema,
`tokenleap.options`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import TokenleapError
from ..methods import METHODS
from ..models.kernels import parse_quant
from ..options import check_known, check_value, kind, names, parse_text
from .anchors import ANCHORS, HF_METHODS, HF_OPTIONS


@dataclass
class BenchMethod:
    """One column of the benchmark: a tokenleap method or an HF anchor, with its options."""

    name: str  # as reported, e.g. "sps" or "sps@g=2" in a gamma sweep
    base: str  # key in METHODS, or an anchor: "hf", "hf-assisted", "hf-pld", "llamacpp"
    options: dict[str, Any]
    needs_draft: bool
    lossless: bool
    quant: str | None = None  # the target's weight quantization for this column (None: the run's --quant)
    draft: str | None = None  # this column's draft (`sps@draft=self:int4`; None: the run's --draft)

    @property
    def is_hf(self) -> bool:
        return self.base in HF_METHODS

    @property
    def is_anchor(self) -> bool:
        """Not a tokenleap method: HF's loops or llama.cpp."""
        return self.base in ANCHORS

    def info(self) -> dict[str, Any]:
        """What results.json records about the method, with its effective option values."""
        effective = dict(self.options)
        if not self.is_anchor:
            effective = dataclasses.asdict(METHODS[self.base].make_options(self.options))
        return {"name": self.name, "base": self.base, "options": effective,
                "needs_draft": self.needs_draft, "lossless": self.lossless, "quant": self.quant, "draft": self.draft}


def accepted_options(base: str) -> tuple[str, ...]:
    if base in ANCHORS:
        return ANCHORS[base]
    return names(METHODS[base].options)


def options_schema(base: str) -> type | None:
    """The options class that declares a method's options (None for an unknown method)."""
    return HF_OPTIONS if base in ANCHORS else METHODS[base].options if base in METHODS else None


def parse_variant(entry: str) -> tuple[str, dict[str, Any]]:
    """"pass@lookahead=2+embeddings=zero" -> ("pass", {"lookahead": 2, "embeddings": "zero"}):
    one method several times in a run, each with its own options (the entry is its label).
    `quant=int8` and `draft=self:int4` (not method options: the target's weights, the column's
    draft) are kept as text."""
    name, _, spec = entry.partition("@")
    options: dict[str, Any] = {}
    for item in filter(None, spec.split("+")):
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise TokenleapError(f"bad method variant {entry!r}: options are key=value joined by '+' "
                                 "(e.g. pass@lookahead=2+embeddings=zero)")
        key = key.replace("-", "_")
        schema = options_schema(name)
        # An option the method does not take (a typo, an unknown method) stays text: refused later.
        options[key] = parse_text(kind(schema, key) if schema and key in accepted_options(name) else None, text)
    return name, options


def plan_methods(names: list[str], options: dict[str, Any], sweep_gamma: list[int] | None = None) -> list[BenchMethod]:
    """The methods to run, each given only the options it accepts. With a gamma sweep, every
    method taking `gamma` becomes one method per value, named like `sps@g=2`."""
    if not names:
        raise TokenleapError("no methods given (--methods ar,sps,...)")
    available = list(METHODS) + list(ANCHORS)
    planned: list[BenchMethod] = []
    for entry in dict.fromkeys(names):  # a method listed twice runs once
        name, variant = parse_variant(entry)
        if name not in available:
            raise TokenleapError(f"unknown method {name!r}; available: {', '.join(available)}")
        quant = variant.pop("quant", None)
        if quant is not None:
            if name in ANCHORS:
                raise TokenleapError(f"{entry}: the anchors run their own forward on the run's weights (llama.cpp: "
                                     "the GGUF's); quant= variants are for tokenleap methods")
            parse_quant(str(quant))  # a bad value fails now, not mid-run
            quant = str(quant)
        draft = variant.pop("draft", None)
        needs_draft = name == "hf-assisted" or (name in METHODS and METHODS[name].needs_draft)
        if draft is not None and not needs_draft:
            raise TokenleapError(f"{entry}: method {name!r} takes no draft model")
        takes = accepted_options(name)
        check_known(variant, takes, owner=f"method {name!r}")
        own = {**{k: v for k, v in options.items() if k in takes}, **variant}
        # llama.cpp runs the GGUF's own weights, not the target's: its output is not ours to match.
        lossless = name in HF_METHODS or (name in METHODS and METHODS[name].lossless)
        gammas = sweep_gamma if sweep_gamma and "gamma" in takes and "gamma" not in variant else [None]
        for g in gammas:
            opts = own if g is None else {**own, "gamma": g}
            label = entry if g is None else f"{entry}@g={g}"
            planned.append(BenchMethod(label, name, opts, needs_draft, lossless, quant,
                                       None if draft is None else str(draft)))
    if sweep_gamma and not any("@g=" in m.name for m in planned):
        raise TokenleapError("--sweep-gamma needs a method with a gamma option among --methods (e.g. sps)")
    for m in planned:  # bad option values fail now, not mid-run
        if m.is_anchor:
            m.options = {k: check_value(HF_OPTIONS, k, v, owner=f"method {m.base!r}") for k, v in m.options.items()}
        else:
            METHODS[m.base].make_options(m.options)
    return planned


def unused_options(methods: list[BenchMethod], options: dict[str, Any]) -> list[str]:
    used = {k for m in methods for k in accepted_options(m.base)}
    return sorted(set(options) - used)
