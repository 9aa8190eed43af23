"""`tokenleap train ...` subcommands."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Callable

from .. import options
from ..errors import TokenleapError
from ..flags import add_option_flag, add_runtime_flags
from ..models.registry import DEFAULT_MODEL, lookup
from ..models.userfile import register


# kind -> (help, module, config class, trainer function, what --export writes, takes the command line)
TRAINERS = {
    "draft": ("distil a small draft model from the target (resumable)", "draft", "DraftTrainConfig",
              "train_draft", "write the committed artifact here when done", False),
    "lookahead": ("train PaSS lookahead embeddings of a frozen model (resumable)", "lookahead",
                  "LookaheadTrainConfig", "train_lookahead",
                  "write lookahead.safetensors + training.json here when done", True),
    "early-exit": ("distil PPD early-exit heads on a frozen model (resumable)", "early_exit",
                   "EarlyExitTrainConfig", "train_early_exit", "write the committed artifact here when done", True),
}

# kind -> the key of the [models.NAME] entry that `--register NAME` points at the export
REGISTER_KEYS = {"draft": "draft", "lookahead": "lookahead", "early-exit": "exit_heads"}


def _trainer(kind: str):
    """(config class, trainer function) of a kind, imported only when used."""
    import importlib

    _, module, config, function, _, _ = TRAINERS[kind]
    mod = importlib.import_module(f".{module}", __package__)
    return getattr(mod, config), getattr(mod, function)


def add_train_command(sub) -> Callable[[argparse.Namespace], int]:
    train = sub.add_parser("train", help="train a draft model, lookahead embeddings or early-exit heads")
    kinds = train.add_subparsers(dest="what", required=True)
    for kind, (help_text, _, _, _, export_help, _) in TRAINERS.items():
        config, _ = _trainer(kind)
        parser = kinds.add_parser(kind, help=help_text)
        parser.add_argument("--model", default=DEFAULT_MODEL, help="the target model")
        add_runtime_flags(parser, quant=False)  # the model runs (data and training) in this dtype, on this device
        parser.add_argument("--export", default=None, help=export_help)
        parser.add_argument("--register", metavar="NAME", default=None,
                            help=f"after --export, add or update [models.NAME] in the user registry file "
                                 f"(models.toml): the model's path and {REGISTER_KEYS[kind]} = the export")
        parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
        for name, option_kind in options.kinds(config).items():
            add_option_flag(parser, name, option_kind, options.help_text(config, name), default=None)
    return run_train


def run_train(args: argparse.Namespace) -> int:
    import shlex
    import sys

    import torch

    from ..planner import get_model

    if args.threads:
        torch.set_num_threads(args.threads)
    config, trainer = _trainer(args.what)
    given = {name: getattr(args, name) for name in options.names(config) if getattr(args, name) is not None}
    cfg = options.build(config, given, owner=f"tokenleap train {args.what}")
    entry = _registration(args) if args.register else None  # checked before training, written after
    extra = ("tokenleap " + shlex.join(sys.argv[1:]),) if TRAINERS[args.what][5] else ()
    metrics = trainer(get_model(args.model, args.dtype, args.device), cfg, args.export, *extra)
    print(json.dumps(metrics, indent=2))
    if entry:
        print(f"registered {args.register} in {register(args.register, **entry)}", file=sys.stderr)
    return 0


def _registration(args: argparse.Namespace) -> dict:
    """What `--register NAME` will write ([models.NAME]: the path of --model and the export),
    checked now so that a bad name or file fails before training, not after."""
    if not args.export:
        raise TokenleapError("--register needs --export DIR: the registry entry points at the exported artifact")
    entry = {"path": model_path(args.model, args.register),
             REGISTER_KEYS[args.what]: os.path.abspath(Path(args.export).expanduser())}
    register(args.register, write=False, **entry)
    return entry


def model_path(model: str, name: str) -> str | None:
    """The `path` to register for --model: None (keep the entry's own) when training entry NAME
    itself; a registry model's underlying checkpoint (its .gguf file, directory or hub id); a
    local path made absolute; a hub id as given."""
    from ..models.loading import locate

    entry = lookup(model)
    if entry is None:
        local = Path(model).expanduser()
        return os.path.abspath(local) if local.exists() else model  # symlinks kept, as the user laid them out
    if model == name:
        return None
    return str(entry.locate()) if entry.base is None else locate(model)
