"""Options and helpers shared by the subcommands: architecture selection, overrides, output."""
from __future__ import annotations

import argparse
import json
import math
import sys

from pyns.errors import PynsError
from pyns.scaling.budget import human  # noqa: F401  (re-exported for the subcommands)


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


def arch_from_args(args: argparse.Namespace, bundle=None):
    """The Arch that ARCH names: a shipped name or .arch file, or a .pyns bundle (its concrete .arch text;
    pass `bundle` when the caller has opened it already)."""
    from pyns.arch import load, loads
    from pyns.export.bundle import is_bundle, open_bundle

    params = parse_assignments(args.sets, "--set")
    if bundle is None and is_bundle(args.arch):
        bundle = open_bundle(args.arch)
    if bundle is not None:
        return loads(bundle.arch_text, filename=bundle.where, variant=args.variant, policy=args.policy, **params)
    return load(args.arch, variant=args.variant, policy=args.policy, **params)


def print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2)
    sys.stdout.write("\n")


def check_out_file(path) -> None:
    """Refuse an output file that cannot be written, before any work (OutputError: exit 2, one line)."""
    from pyns.safewrite import check_writable_file

    if path is not None:
        check_writable_file(path)


def check_out_folder(path) -> None:
    """Refuse a run folder that cannot be created or written, before loading data or training."""
    from pyns.safewrite import check_writable_folder

    if path is not None:
        check_writable_folder(path)
