"""The `pyns` command line: one module per subcommand, each exposing `register(subparsers)`.

Subcommand modules import the library inside their handlers, not at module level: building the parser
must not import torch, scipy, scikit-learn or matplotlib, so that `pyns count`, `pyns scale` and `--help`
start in a fraction of a second (tests/test_cli_startup.py).
"""
from pyns.cli.main import main

__all__ = ["main"]
