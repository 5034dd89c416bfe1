"""Options and helpers shared by the subcommands: architecture selection, overrides, output."""
from __future__ import annotations

import argparse
import math
import sys

from pyns.errors import PynsError
from pyns.policies import POLICIES  # light: `import pyns` has already loaded it (numpy + lark, no torch)
from pyns.scaling.budget import human  # noqa: F401  (re-exported for the subcommands)


def add_arch_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arch", metavar="ARCH",
                        help="a shipped architecture name (vgg11, resnet18, resnet18:tinyimagenet, ...) "
                             "or a path to an .arch file")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="K=V",
                        help="override a network parameter, e.g. --set classes=100 (repeatable)")
    parser.add_argument("--variant", help="a named variant declared in the file (same as ARCH:variant)")
    parser.add_argument("--policy", choices=tuple(POLICIES),
                        help="scaling policy for multipliers (default: the file's own)")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """--data, --root and --data-option, as every training command takes them."""
    parser.add_argument("--data", required=True, metavar="NAME",
                        help="cifar10, cifar100, tinyimagenet, imagefolder, digits or synthetic")
    parser.add_argument("--root", metavar="DIR",
                        help="folder holding the data set (not needed for digits/synthetic)")
    parser.add_argument("--data-option", dest="data_options", action="append", default=[], metavar="K=V",
                        help="data set reader option, e.g. --data-option num_samples=4096 (repeatable)")


def add_augment_options(group) -> None:
    """--augment SPEC and its shorthand --no-augment, as every training command takes them."""
    from pyns.data.augment_spec import SPEC_HELP  # torch-free

    group.add_argument("--augment", metavar="ITEMS", help=f"training augmentation: {SPEC_HELP}")
    group.add_argument("--no-augment", action="store_true", help="no data augmentation (= --augment none)")


def augment_setting(args: argparse.Namespace):
    """True (the data set's default), False (none) or a parsed spec, from --augment / --no-augment; None
    when neither is given (a resumed run keeps its own)."""
    from pyns.data.augment_spec import parse_augment

    if args.no_augment and args.augment is not None:
        raise PynsError("give --augment or --no-augment, not both")
    if args.no_augment:
        return False
    return None if args.augment is None else parse_augment(args.augment)


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads torch may use (default: torch's own choice, one per core). Results "
                             "are bit-reproducible only at the same thread count: it sets the order in which "
                             "floats are summed")


def apply_threads(args: argparse.Namespace) -> int:
    """Set torch's CPU thread count from --threads; returns the count in effect (printed with the seed)."""
    import torch  # only in handlers of training commands

    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise PynsError(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return torch.get_num_threads()


def note_ignored_root(data: str, root: str | None) -> None:
    """--root with a built-in data set is ignored; say so instead of ignoring it silently."""
    from pyns.data.names import BUILT_IN, canonical_name

    if root is not None and canonical_name(data) in BUILT_IN:
        print(f"pyns: note: --root {root} is ignored: the {canonical_name(data)} data set is built in "
              "(no folder is read)", file=sys.stderr)


def print_data_notes(*datasets) -> None:
    """What a reader had to do to a data set (e.g. unreadable images skipped), on stderr."""
    for dataset in datasets:
        for note in getattr(dataset, "notes", ()):
            print(f"pyns: note: {note}", file=sys.stderr)


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
    """Print `obj` as strict JSON (NaN and infinities as null): the one `--json` writer of every command."""
    from pyns.runfiles import json_text

    sys.stdout.write(json_text(obj))


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
