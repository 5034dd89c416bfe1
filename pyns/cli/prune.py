"""`pyns prune ARCH --data NAME --out RUN_DIR`: NeuralScale's iterative Taylor-FO pruning (Algorithm 1).

Pre-trains, prunes with physical shrinking, writes the trajectory into RUN_DIR, then fits the scaling
profile (RUN_DIR/profile.json) and prints its path. Every SPEC §5 number is an option with the paper's
default (TinyImageNet gets its batch 100 and Q = 100 unless told otherwise).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from pyns.cli.common import add_arch_options, add_data_options, human, parse_assignments
from pyns.errors import DataError, PynsError, RunError

# CLI flag -> PruneConfig field, for the options that map one to one.
_CONFIG_FLAGS = {
    "warmup": "warmup_epochs", "warmup_lr": "warmup_lr", "lr": "prune_lr", "lr_decay": "lr_decay",
    "lr_decay_every": "lr_decay_every", "momentum": "momentum", "weight_decay": "weight_decay",
    "batch_size": "batch_size", "every": "prune_every", "units": "units_per_step",
    "stop_fraction": "stop_fraction", "min_width": "min_width", "epochs": "max_epochs", "seed": "seed",
    "checkpoint_every": "checkpoint_every",
}


def register(sub) -> None:
    p = sub.add_parser(
        "prune", help="iterative Taylor-FO pruning -> trajectory and scaling profile",
        description="Pre-train ARCH on a data set, then prune it iteratively by first-order Taylor importance "
                    "(NeuralScale Algorithm 1), shrinking the network as it goes. Writes the trajectory "
                    "(parameters tau and width per layer at every step), checkpoints and the fitted "
                    "profile into RUN_DIR. Defaults are the paper's.")
    add_arch_options(p)
    add_run_options(p)
    p.add_argument("--widths", action="append", default=[], metavar="K=V,...",
                   help="start widths (others keep their defaults), e.g. --widths c1=32,c2=64")
    p.add_argument("--ratio", type=float, metavar="R", help="start from every searchable width scaled by R")
    p.add_argument("--mode", choices=("shrink", "masked"),
                   help="shrink the network physically (default) or only mask channels (slow; for comparison)")
    add_schedule_options(p)
    p.add_argument("--no-fit", action="store_true", help="do not fit the profile at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Data set, run folder, resume and device: shared by `pyns prune` and `pyns descent`."""
    add_data_options(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder (must be new or empty)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available; default)")


def add_schedule_options(p: argparse.ArgumentParser) -> None:
    """Every Algorithm 1 number as an option (unset = the paper's default)."""
    sched = p.add_argument_group("schedule (SPEC §5 defaults)")
    sched.add_argument("--warmup", type=int, metavar="P", help="pre-training epochs (10)")
    sched.add_argument("--warmup-lr", type=float, metavar="LR", help="pre-training learning rate (0.1)")
    sched.add_argument("--lr", type=float, metavar="LR", help="learning rate when pruning starts (0.01)")
    sched.add_argument("--lr-decay", type=float, metavar="F", help="divide the pruning lr by F ... (1.5)")
    sched.add_argument("--lr-decay-every", type=int, metavar="E", help="... every E pruning epochs (10)")
    sched.add_argument("--momentum", type=float, help="SGD momentum (0.5)")
    sched.add_argument("--weight-decay", type=float, metavar="WD", help="SGD weight decay (5e-4)")
    sched.add_argument("--batch-size", type=int, metavar="B", help="minibatch size (256; 100 on TinyImageNet)")
    sched.add_argument("--every", type=int, metavar="Q", help="minibatches per prune step (50; 100 on TinyImageNet)")
    sched.add_argument("--units", type=int, metavar="K", help="units removed per prune step (10)")
    sched.add_argument("--stop-fraction", type=float, metavar="F", help="stop when this fraction of units is gone (0.95)")
    sched.add_argument("--min-width", type=int, metavar="N", help="no width drops below N (1)")
    sched.add_argument("--skip-at-min-width", action="store_true",
                       help="when a lowest-ranked unit's width is at the minimum, skip it instead of stopping")
    sched.add_argument("--epochs", type=int, metavar="N", help="at most N pruning epochs (default: until a stop rule)")
    sched.add_argument("--no-augment", action="store_true", help="no data augmentation")
    sched.add_argument("--seed", type=int, help="random seed (0)")
    sched.add_argument("--checkpoint-every", type=int, metavar="N", help="prune steps between checkpoints (1)")


def schedule_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The PruneConfig fields the command line sets explicitly."""
    overrides = {field: getattr(args, flag) for flag, field in _CONFIG_FLAGS.items()
                 if getattr(args, flag) is not None}
    if args.no_augment:
        overrides["augment"] = False
    if args.skip_at_min_width:
        overrides["stop_at_min_width"] = False
    return overrides


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise RunError(f"--device must be cpu, cuda or auto, got {name!r}")
    return name


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
    from pyns.data import load_dataset
    from pyns.dsl.expr import evaluate

    arch = _load_arch(args, None, saved)
    train_set = load_dataset(args.data, root, "train", resolution=arch.resolution,
                             channels=arch.network.in_channels, **data_options)
    arch = _load_arch(args, train_set.num_classes, saved)
    outputs = int(evaluate(arch.network.out_features, arch.defaults))
    if outputs != train_set.num_classes:
        raise DataError(f"{arch.name} has {outputs} outputs but the data set has {train_set.num_classes} "
                        f"classes; pass --set classes={train_set.num_classes}")
    return arch, train_set


def _saved_config(args: argparse.Namespace) -> dict[str, Any] | None:
    """The config of the run being resumed, or None for a new run."""
    from pyns.prune.runfolder import CONFIG_FILE, RUN_KIND
    from pyns.runfiles import load_config

    if not args.resume:
        return None
    saved = load_config(args.out, CONFIG_FILE)
    if saved is not None and saved.get("kind") != RUN_KIND:
        raise RunError(f"{args.out} holds a run of another kind ({saved.get('kind')!r}), not a pruning run")
    return saved


def run(args: argparse.Namespace) -> int:
    from pyns.prune.run import prune
    from pyns.prune.runfolder import TRAJECTORY_FILE
    from pyns.prune.schedule import PruneConfig

    saved = _saved_config(args)
    saved_data = (saved or {}).get("data", {})
    data_options = parse_assignments(args.data_options, "--data-option")
    if saved is not None and not args.data_options:
        data_options = dict(saved_data.get("options", {}))
    root = args.root if args.root is not None or saved is None else saved_data.get("root")
    arch, train_set = load_arch_and_data(args, saved, root, data_options)

    overrides = schedule_overrides(args)
    if saved is not None:
        # Resuming: what the command line leaves out is what the run was started with; what it states
        # is compared with the saved config (a difference is refused by `prune`).
        config = PruneConfig.from_dict({**saved.get("prune", {}), **overrides})
    else:
        config = PruneConfig.for_dataset(args.data, **overrides)

    if args.ratio is not None and not 0 < args.ratio <= 100:
        raise PynsError(f"--ratio must be in (0, 100], got {args.ratio}")
    if saved is not None and args.ratio is None and not args.widths:
        widths = arch.widths(saved.get("start_widths"))
    else:
        widths = arch.uniform_widths(args.ratio) if args.ratio is not None else arch.defaults
        widths.update(parse_assignments(args.widths, "--widths"))
    mode = args.mode or (saved or {}).get("mode", "shrink")
    data = {"name": train_set.name, "root": root, "options": data_options, "num_samples": len(train_set),
            "num_classes": train_set.num_classes}
    try:
        result = prune(arch, train_set, config, args.out, mode=mode, device=_device(args.device),
                       resume=args.resume, widths=widths, data=data, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"pyns: the last checkpoint is in {args.out}; continue with the same command and --resume",
              file=sys.stderr)
        raise

    state = "finished" if result.done else "stopped"
    print(f"{arch.name} on {train_set.name}: {state} after {result.steps} prune steps "
          f"({result.stop_reason or 'not finished'})")
    print(f"final: params {result.params:,} ({human(result.params)}), MACs {result.macs:,} ({human(result.macs)})"
          " (MACs: multiply-accumulates of conv/linear layers at batch 1)")
    print(f"trajectory: {result.run_dir / TRAJECTORY_FILE} ({len(result.rows)} rows, "
          f"{len(result.recorded)} recorded)")
    if not args.no_fit:
        if result.recorded:
            from pyns.cli.fit import fit_run

            path, notes = fit_run(result.run_dir)
            for note in notes:
                print(f"pyns: warning: {note}", file=sys.stderr)
            print(f"profile: {path}")
        else:
            print("profile: not fitted (no recorded rows: recording starts once every searchable width "
                  "has lost a unit)")
    return 0
