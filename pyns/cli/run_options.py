"""Options and loading shared by `pyns prune` and `pyns descent`: the run folder, the Algorithm 1 schedule
flags, and the architecture + training split (the architecture's `classes` following the data set)."""
from __future__ import annotations

import argparse
from typing import Any

from pyns.cli.common import add_augment_options, add_data_options, augment_setting, print_data_notes, add_threads_option, note_ignored_root, parse_assignments
from pyns.errors import DataError

# CLI flag -> PruneConfig field, for the options that map one to one.
_CONFIG_FLAGS = {
    "warmup": "warmup_epochs", "warmup_lr": "warmup_lr", "lr": "prune_lr", "lr_decay": "lr_decay",
    "lr_decay_every": "lr_decay_every", "momentum": "momentum", "weight_decay": "weight_decay",
    "batch_size": "batch_size", "every": "prune_every", "units": "units_per_step",
    "stop_fraction": "stop_fraction", "min_width": "min_width", "epochs": "max_epochs", "seed": "seed",
    "checkpoint_interval": "checkpoint_interval_s",
}


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Data set, run folder, resume and device: shared by `pyns prune` and `pyns descent`."""
    add_data_options(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (must be new or empty)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available; default)")
    add_threads_option(p)


def add_schedule_options(p: argparse.ArgumentParser) -> None:
    """Every Algorithm 1 number as an option (unset = the paper's default)."""
    sched = p.add_argument_group("schedule (the paper's defaults; units and Q derived when unset)")
    sched.add_argument("--warmup", type=int, metavar="P", help="pre-training epochs (10)")
    sched.add_argument("--warmup-lr", type=float, metavar="LR", help="pre-training learning rate (0.1)")
    sched.add_argument("--lr", type=float, metavar="LR", help="learning rate when pruning starts (0.01)")
    sched.add_argument("--lr-decay", type=float, metavar="F", help="divide the pruning lr by F ... (1.5)")
    sched.add_argument("--lr-decay-every", type=int, metavar="E", help="... every E pruning epochs (10)")
    sched.add_argument("--momentum", type=float, help="SGD momentum (0.5)")
    sched.add_argument("--weight-decay", type=float, metavar="WD", help="SGD weight decay (5e-4)")
    sched.add_argument("--batch-size", type=int, metavar="B", help="minibatch size (256; 100 on TinyImageNet)")
    sched.add_argument("--every", type=int, metavar="Q",
                       help="minibatches per prune step (the paper's 50, 100 on TinyImageNet; at most one "
                            "epoch when unset)")
    sched.add_argument("--units", type=int, metavar="K",
                       help="units removed per prune step (default: 1%% of the network's prunable units, "
                            "between 1 and the paper's 10)")
    sched.add_argument("--stop-fraction", type=float, metavar="F", help="stop when this fraction of the filters is gone (0.95)")
    sched.add_argument("--min-width", type=int, metavar="N", help="no width drops below N (1)")
    sched.add_argument("--skip-at-min-width", action="store_true",
                       help="when a lowest-ranked unit's width is at the minimum, skip it instead of stopping")
    sched.add_argument("--epochs", type=int, metavar="N", help="at most N pruning epochs (default: until a stop rule)")
    add_augment_options(sched)
    sched.add_argument("--seed", type=int, help="random seed (0)")
    sched.add_argument("--checkpoint-interval", type=float, metavar="S",
                       help="seconds between checkpoints, at most (60; the end and Ctrl-C always save)")


def schedule_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The PruneConfig fields the command line sets explicitly."""
    overrides = {field: getattr(args, flag) for flag, field in _CONFIG_FLAGS.items()
                 if getattr(args, flag) is not None}
    augment = augment_setting(args)
    if augment is not None:
        overrides["augment"] = augment
    if args.skip_at_min_width:
        overrides["stop_at_min_width"] = False
    return overrides


def _load_arch(args: argparse.Namespace, classes: int | None, saved: dict[str, Any] | None):
    from pyns.arch import load

    params: dict[str, Any] = parse_assignments(args.sets, "--set")
    if saved is not None and not args.sets:
        params = dict(saved.get("arch_params", {}))
    arch = load(args.arch, variant=args.variant, policy=args.policy, **params)
    follow_data = classes is not None and "classes" not in params and "classes" in arch.source.params
    if follow_data and arch.network.params.get("classes") != classes:  # the data set's, unless told otherwise
        arch = load(args.arch, variant=args.variant, policy=args.policy, **params, classes=classes)
    return arch


def load_arch_and_data(args: argparse.Namespace, saved: dict[str, Any] | None, root: str | None,
                       data_options: dict[str, Any]):
    """The architecture (its `classes` following the data set unless --set says otherwise) and the
    training split, loaded at the architecture's resolution and channel count."""
    from pyns.data.datasets import load_dataset
    from pyns.dsl.expr import evaluate

    note_ignored_root(args.data, root)
    arch = _load_arch(args, None, saved)
    train_set = load_dataset(args.data, root, "train", resolution=arch.resolution,
                             channels=arch.network.in_channels, **data_options)
    print_data_notes(train_set)
    arch = _load_arch(args, train_set.num_classes, saved)
    outputs = int(evaluate(arch.network.out_features, arch.defaults))
    if outputs != train_set.num_classes:
        raise DataError(f"{arch.name} has {outputs} outputs but the data set has {train_set.num_classes} "
                        f"classes; pass --set classes={train_set.num_classes}")
    return arch, train_set


def run_header(arch, train_set, *, seed: int, threads: int, device: str, augment: str) -> str:
    """The first line of a training command: what the run's result depends on (seed, threads, device,
    augmentation), so that a rerun under the same conditions can be checked for bit-equality."""
    plural = "s" if threads != 1 else ""
    return (f"{arch.name} on {train_set.name} ({len(train_set):,} training images): seed {seed}, "
            f"{threads} CPU thread{plural}, device {device}, augmentation {augment}")
