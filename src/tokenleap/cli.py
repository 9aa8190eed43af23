"""The `tokenleap` command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from .bench.command import add_bench_command
from .bench.ppd_profile import add_ppd_profile_command
from .envinfo import add_env_command
from .errors import TokenleapError
from .flags import add_method_option_flags, add_runtime_flags, add_sampling_flags, method_options
from .methods import METHODS
from .models.registry import DEFAULT_MODEL, entries
from .train.command import add_train_command


def cmd_generate(args: argparse.Namespace, option_names: list[str]) -> int:
    from .generation import generate

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    out = generate(prompt, method=args.method, model=args.model, draft=args.draft,
                   max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed, stream=True, stop=args.stop or None,
                   chat=False if args.no_chat else None, dtype=args.dtype, device=args.device, quant=args.quant,
                   **method_options(args, option_names))
    if args.json:
        for _ in out:
            pass
        print(json.dumps(out.result.to_dict(), indent=2))
        return 0
    for piece in out:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print(f"[{out.result.finish_reason}] {out.result.stats.summary()}", file=sys.stderr)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """The registry: built-in entries and the user file's, where each comes from, what it has."""
    rows = [("name", "source", "artifacts", "description")]
    rows += [(e.name, e.source, ", ".join(e.artifacts()) or "-", e.description) for e in entries().values()]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    serve(args.model, draft=args.draft, host=args.host, port=args.port, method=args.method, dtype=args.dtype,
          device=args.device, quant=args.quant, queue_size=args.queue_size)
    return 0


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable[[argparse.Namespace], int]]]:
    parser = argparse.ArgumentParser(prog="tokenleap", description="Multi-token decoding for causal LMs.")
    sub = parser.add_subparsers(dest="command", required=True)
    handlers: dict[str, Callable[[argparse.Namespace], int]] = {}

    gen = sub.add_parser("generate", help="generate text with a decoding method, streamed to the terminal")
    gen.add_argument("prompt", help="prompt text ('-' reads standard input)")
    gen.add_argument("--method", "-m", default="ar", help=f"one of: {', '.join(METHODS)}")
    gen.add_argument("--model", default=DEFAULT_MODEL, help="registry name, HF directory, .gguf file or hub id")
    gen.add_argument("--draft", default=None, help="draft model for draft-based methods; self:int8 / self:int4 = the target's own "
                     "weights, quantized (no training needed)")
    gen.add_argument("--max-new-tokens", "-n", type=int, default=128)
    add_sampling_flags(gen)
    gen.add_argument("--stop", action="append", help="stop string (repeatable)")
    add_runtime_flags(gen)
    gen.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    gen.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    names = add_method_option_flags(gen)
    handlers["generate"] = lambda a: cmd_generate(a, names)

    sub.add_parser("models", help="list registry models: built-in ones and the user file's "
                   "($TOKENLEAP_REGISTRY, else models.toml in $TOKENLEAP_HOME)")
    handlers["models"] = cmd_models

    srv = sub.add_parser("serve", help="serve an OpenAI-compatible HTTP API (completions, chat, streaming)")
    srv.add_argument("--model", default=DEFAULT_MODEL, help="registry name, HF directory, .gguf file or hub id")
    srv.add_argument("--draft", default=None, help="draft model for draft-based methods; self:int8 / self:int4 = the target's own "
                     "weights, quantized (no training needed)")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument("--method", "-m", default="ar",
                     help=f"default method when a request names none: {', '.join(METHODS)}")
    add_runtime_flags(srv)
    srv.add_argument("--queue-size", type=int, default=16,
                     help="most requests admitted at once, the running one included; more get HTTP 429")
    handlers["serve"] = cmd_serve

    handlers["env"] = add_env_command(sub)
    handlers["bench"] = add_bench_command(sub)
    handlers["ppd-profile"] = add_ppd_profile_command(sub)
    handlers["train"] = add_train_command(sub)
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    quiet_transformers()
    try:
        return handlers[args.command](args)
    except TokenleapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def quiet_transformers() -> None:
    """Keep transformers' per-load progress bars and advisory warnings off the terminal."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


if __name__ == "__main__":
    sys.exit(main())
