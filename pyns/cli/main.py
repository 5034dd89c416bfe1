"""Entry point: argument parsing, subcommand dispatch, and the error contract.

Every `PynsError` becomes one message on stderr and exit status 2; Ctrl-C exits 130 after the command's
own cleanup (checkpoints are written by the commands themselves). No traceback reaches a user unless
PYNS_DEBUG=1 is set.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from pyns.errors import PynsError

# Subcommand modules, in the order `pyns --help` lists them. A module that is missing (an optional
# part not installed) is skipped rather than breaking the whole CLI.
COMMANDS = ("count", "scale", "prune", "fit", "plot", "descent", "train", "sweep", "tiny", "export")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own usage errors: status 2, like ours
        self.print_usage(sys.stderr)
        self.exit(2, f"pyns: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from pyns import __version__

    parser = _Parser(
        prog="pyns",
        description="Find the best layer widths, depth and input resolution of a CNN under a parameter or "
                    "compute budget (NeuralScale and TinyNet). Costs follow one convention: params = "
                    "trainable parameters; MACs = multiply-accumulates of conv and linear layers, batch 1 "
                    "(FLOPs = 2 x MACs).",
        epilog="Run `pyns COMMAND --help` for a command's options. Shipped architectures are usable by name "
               "(e.g. `pyns count vgg11`); any .arch file by path.")
    parser.add_argument("--version", action="version", version=f"pyns {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"pyns.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"pyns.cli.{name}":
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except PynsError as err:
        if os.environ.get("PYNS_DEBUG"):
            raise
        print(f"pyns: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyns: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `pyns count ... | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
