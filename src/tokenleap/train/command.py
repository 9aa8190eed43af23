"""`tokenleap train ...` subcommands."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Callable

from ..models.registry import DEFAULT_MODEL


def add_train_command(sub) -> Callable[[argparse.Namespace], int]:
    from .draft import DraftTrainConfig

    train = sub.add_parser("train", help="train a draft model, lookahead embeddings or early-exit heads")
    kinds = train.add_subparsers(dest="what", required=True)
    draft = kinds.add_parser("draft", help="distil a small draft model from the target (resumable)")
    draft.add_argument("--model", default=DEFAULT_MODEL, help="the target to distil from")
    draft.add_argument("--dtype", default="bf16", help="dtype the target runs in while writing data")
    draft.add_argument("--export", default=None, help="write the committed artifact here when done")
    draft.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    for f in dataclasses.fields(DraftTrainConfig):
        draft.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    from .lookahead import LookaheadTrainConfig

    la = kinds.add_parser("lookahead", help="train PaSS lookahead embeddings of a frozen model (resumable)")
    la.add_argument("--model", default=DEFAULT_MODEL, help="the model whose lookahead embeddings are trained")
    la.add_argument("--dtype", default="bf16", help="dtype the model runs in (data and training)")
    la.add_argument("--export", default=None, help="write lookahead.safetensors + training.json here when done")
    la.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    for f in dataclasses.fields(LookaheadTrainConfig):
        la.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    from .early_exit import EarlyExitTrainConfig

    ee = kinds.add_parser("early-exit", help="distil PPD early-exit heads on a frozen model (resumable)")
    ee.add_argument("--model", default=DEFAULT_MODEL, help="the model whose exit heads are trained")
    ee.add_argument("--dtype", default="bf16", help="dtype the model runs in (data and features)")
    ee.add_argument("--export", default=None, help="write the committed artifact here when done")
    ee.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    for f in dataclasses.fields(EarlyExitTrainConfig):
        ee.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    return run_train


def run_train(args: argparse.Namespace) -> int:
    import torch

    from ..generation import get_model
    from .draft import DraftTrainConfig, train_draft

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.what == "draft":
        cfg = DraftTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DraftTrainConfig)})
        metrics = train_draft(get_model(args.model, args.dtype), cfg, args.export)
        print(json.dumps(metrics, indent=2))
    elif args.what == "lookahead":
        import shlex
        import sys

        from .lookahead import LookaheadTrainConfig, train_lookahead

        cfg = LookaheadTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(LookaheadTrainConfig)})
        command = "tokenleap " + shlex.join(sys.argv[1:])
        metrics = train_lookahead(get_model(args.model, args.dtype), cfg, args.export, command)
        print(json.dumps(metrics, indent=2))
    elif args.what == "early-exit":
        import shlex
        import sys

        from .early_exit import EarlyExitTrainConfig, train_early_exit

        cfg = EarlyExitTrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EarlyExitTrainConfig)})
        command = "tokenleap " + shlex.join(sys.argv[1:])
        metrics = train_early_exit(get_model(args.model, args.dtype), cfg, args.export, command)
        print(json.dumps(metrics, indent=2))
    return 0
