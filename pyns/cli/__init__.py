"""The `pyns` command line: one module per subcommand, each exposing `register(subparsers)`."""
from pyns.cli.main import main

__all__ = ["main"]
