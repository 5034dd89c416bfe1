"""Options and helpers shared by the subcommands: architecture selection, overrides, output."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from pyns.errors import PynsError


def add_arch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arch", metavar="ARCH",
                        help="a shipped architecture name (vgg11, resnet18, resnet18:tinyimagenet, ...) "
                             "or a path to an .arch file")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="K=V",
                        help="override a network parameter, e.g. --set classes=100 (repeatable)")
    parser.add_argument("--variant", help="a named variant declared in the file (same as ARCH:variant)")
    parser.add_argument("--policy", choices=("uniform", "efficientnet", "tinynet"),
                        help="scaling policy for multipliers (default: the file's own)")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """--data, --root and --data-option, as every training command takes them."""
    parser.add_argument("--data", required=True, metavar="NAME",
                        help="cifar10, cifar100, tinyimagenet, imagefolder, digits or synthetic")
    parser.add_argument("--root", metavar="DIR",
                        help="folder holding the data set (not needed for digits/synthetic)")
    parser.add_argument("--data-option", dest="data_options", action="append", default=[], metavar="K=V",
                        help="data set reader option, e.g. --data-option num_samples=4096 (repeatable)")


def parse_number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise PynsError(f"{what}: `{text}` is not a number") from None
    if not math.isfinite(value):
        raise PynsError(f"{what}: `{text}` is not a finite number")
    return int(value) if value.is_integer() else value


def parse_assignments(items: list[str], what: str) -> dict[str, float]:
    """`k=v` items, each possibly comma-separated (`a=1,b=2`)."""
    out: dict[str, float] = {}
    for item in items:
        for part in item.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise PynsError(f"{what}: expected NAME=VALUE, got `{part}`")
            key, value = part.split("=", 1)
            out[key.strip()] = parse_number(value.strip(), f"{what} {key.strip()}")
    return out


def arch_from_args(args: argparse.Namespace):
    from pyns.arch import load

    params = parse_assignments(args.sets, "--set")
    return load(args.arch, variant=args.variant, policy=args.policy, **params)


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename, so no half-written file is ever seen."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise PynsError(f"cannot write {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def human(n: float) -> str:
    """1234567 -> '1.23M' (for tables; exact integers are printed beside it)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:g}"
