"""Command-line flags shared by every subcommand (generate, serve, bench, env, train).

Kept apart from `cli.py` so that subcommands defined in other packages (bench, train) can use
them without importing the CLI itself (which imports them)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from .methods import METHODS


def add_method_option_flags(parser: argparse.ArgumentParser) -> list[str]:
    """One flag per option of any method (e.g. --gamma); only flags the user sets are passed on."""
    names: dict[str, type] = {}
    for spec in METHODS.values():
        for f in dataclasses.fields(spec.options):
            names.setdefault(f.name, type(f.default))
    group = parser.add_argument_group("method options (each method takes its own)")
    for name, kind in names.items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:  # `type=bool` would read "False" as True: a switch with a --no- form instead
            group.add_argument(flag, dest="opt_" + name, action=argparse.BooleanOptionalAction, default=None)
        else:
            group.add_argument(flag, dest="opt_" + name, type=kind, default=None)
    return list(names)


def method_options(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    return {n: getattr(args, "opt_" + n) for n in names if getattr(args, "opt_" + n) is not None}


def add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--temperature", "-t", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0, help="0 = off")
    parser.add_argument("--top-p", type=float, default=1.0, help="1 = off")
    parser.add_argument("--seed", type=int, default=0)


def add_runtime_flags(parser: argparse.ArgumentParser) -> None:
    """--dtype and --device, with the same defaults and help everywhere."""
    parser.add_argument("--dtype", default="auto",
                        help="auto (default: the fastest dtype this hardware computes natively: bf16 on CPUs "
                             "with native bf16, else fp32; bf16/fp16 on CUDA), bf16, fp32 or fp16")
    parser.add_argument("--device", default="auto", help="auto (default: cuda, then mps, then cpu), cpu, cuda[:N] or mps")
