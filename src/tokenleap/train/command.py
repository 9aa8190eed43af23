"""`tokenleap train ...` subcommands."""

from __future__ import annotations

import argparse
import json
from typing import Callable

from .. import options
from ..flags import add_option_flag, add_runtime_flags
from ..models.registry import DEFAULT_MODEL


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
    extra = ("tokenleap " + shlex.join(sys.argv[1:]),) if TRAINERS[args.what][5] else ()
    metrics = trainer(get_model(args.model, args.dtype, args.device), cfg, args.export, *extra)
    print(json.dumps(metrics, indent=2))
    return 0
