"""The `abft` command: one small function per subcommand, flags generated from abft.config (flags.py).

abft run --model smollm2-135m --dataset sst2        # accuracy before, ABFT training, accuracy after
abft evaluate --dataset trec --k 4                  # the StaICC test protocol only
abft datasets                                       # the bundled datasets
abft sweep --dataset sst2 --sizes 32 128            # one run per (method, size): run.py
abft report RUN_DIR | heads | interpolate A B       # analyses: analysis.py
abft ceiling --dataset sst2                         # what ABFT's target attention would be worth

The library raises UserError naming parameters; main() prints it with this command's flags.
"""

from __future__ import annotations

import argparse
import os
import sys

from .. import __version__
from ..errors import UserError
from ..signals import sigterm_as_interrupt
from . import analysis, run
from .flags import worded


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="abft", description="Attention Behavior Fine-Tuning for in-context learning.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    parser.add_argument("--version", action="version", version=f"abft {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run.register(sub)  # run, evaluate, datasets
    analysis.register(sub)  # report, heads, interpolate
    run.register_sweep(sub)
    analysis.register_ceiling(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        with sigterm_as_interrupt():  # a killed run records "interrupted" as on Ctrl-C
            return args.func(args)
    except UserError as exc:
        if args.debug:
            raise
        message = worded(exc, args.parser)
        print("abft: error: " + " ".join(message.splitlines()), file=sys.stderr)  # always one line
        return 2
    except KeyboardInterrupt as exc:
        print(f"abft: {exc or 'interrupted'}", file=sys.stderr)
        return 130
