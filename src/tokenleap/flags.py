"""Command-line flags shared by every subcommand (generate, serve, bench, env, train).

Kept apart from `cli.py` so that subcommands defined in other packages (bench, train) can use
them without importing the CLI itself (which imports them)."""

from __future__ import annotations

import argparse
import functools
from typing import Any

from . import options
from .methods import METHODS


def add_option_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str, kind: type,
                    help: str, **kwargs: Any) -> None:
    """A flag for option `name` (--beam-width for beam_width), read as the option's type. A bool
    is a switch with a --no- form, since `type=bool` would read "False" as True."""
    flag, help = "--" + name.replace("_", "-"), help.replace("%", "%%")  # argparse formats help with %
    if kind is bool:
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help, **kwargs)
    else:
        parser.add_argument(flag, type=functools.partial(options.parse_text, kind), help=help,
                            metavar=name.upper(), **kwargs)


def add_method_option_flags(parser: argparse.ArgumentParser) -> list[str]:
    """One flag per option of any method (e.g. --gamma); only flags the user sets are passed on.
    An option several methods share (gamma: sps, mtad, mtad-tree) gets one flag, whose help
    says what it means to each."""
    users: dict[str, dict[type, list[str]]] = {}  # option -> options class -> methods taking it
    for spec in METHODS.values():
        for name in options.names(spec.options):
            users.setdefault(name, {}).setdefault(spec.options, []).append(spec.name)
    group = parser.add_argument_group("method options (each method takes its own)")
    for name, classes in users.items():
        kinds = {options.kind(cls, name) for cls in classes}
        if len(kinds) > 1:
            raise TypeError(f"option {name!r} has a different type in different methods: one flag cannot read it")
        help = "; ".join(f"{', '.join(methods)}: {options.help_text(cls, name)}" for cls, methods in classes.items())
        add_option_flag(group, name, kinds.pop(), help, dest="opt_" + name, default=None)
    return list(users)


def method_options(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {n: getattr(args, "opt_" + n) for n in names if getattr(args, "opt_" + n) is not None}


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    parser.add_argument("--seed", type=int, default=0)


def add_runtime_flags(parser: argparse.ArgumentParser, quant: bool = True) -> None:
    """--dtype, --device and (unless quant=False) --quant, with the same defaults and help everywhere."""
    parser.add_argument("--dtype", default="auto",
                        help="auto (default: the fastest dtype this hardware computes natively: bf16 on CPUs "
                             "with native bf16, else fp32; bf16/fp16 on CUDA), bf16, fp32 or fp16")
    parser.add_argument("--device", default="auto", help="auto (default: cuda, then mps, then cpu), cpu, cuda[:N] or mps")
    if not quant:
        return
    parser.add_argument("--quant", default="none",
                        help="weight-only quantization of the target: none (default), int8 (per output channel), "
                             "int4 (groups of 32 input columns) or int4-g64 / int4-g128")
