"""`pyns prune ARCH --data NAME --out RUN_DIR`: NeuralScale's iterative Taylor-FO pruning (Algorithm 1).

Pre-trains, prunes with physical shrinking, writes the trajectory into RUN_DIR, then fits the scaling
profile (RUN_DIR/profile.json) and prints its path. Every number of the paper's Algorithm 1 is an option
with the paper's default (TinyImageNet gets its batch 100 and Q = 100 unless told otherwise), except units
per step and Q, which unset are derived from the network and the data set (pyns.neuralscale.prune.defaults).
The effective values are printed before training starts, with a warning when the run cannot record the
points a profile fit needs.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

from pyns.cli.common import add_arch_options, apply_threads, check_out_folder, human, parse_assignments
from pyns.cli.run_options import (add_run_options, add_schedule_options, load_arch_and_data, run_header,
                                  schedule_overrides)
from pyns.errors import PynsError, RunError

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
    p.add_argument("--weights", metavar="FILE|MODEL",
                   help="start from these weights instead of a random init (at the default widths): a state_dict, "
                        "pyns training checkpoint or .safetensors file, named as the original model or as the "
                        "pyns network names its tensors; or, for an imported arch, a model spec "
                        "(torchvision:NAME, timm:NAME, package.module:factory) meaning the model that spec "
                        "builds, with the weights it gives it. pyns never asks for pretrained weights itself "
                        "(nothing is downloaded): torchvision/timm specs are random inits, so load pretrained "
                        "weights in your own factory or pass a file. A --warmup of 0 keeps them as they are")
    p.add_argument("--mode", choices=("shrink", "masked"),
                   help="shrink the network physically (default) or only mask channels (slow; for comparison)")
    add_schedule_options(p)
    p.add_argument("--no-fit", action="store_true", help="do not fit the profile at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object (the summary) on stdout")
    p.set_defaults(handler=run)


def _saved_config(args: argparse.Namespace) -> dict[str, Any] | None:
    """The config of the run being resumed, or None for a new run."""
    from pyns.neuralscale.prune.runfolder import CONFIG_FILE, RUN_KIND
    from pyns.runfiles import load_config

    if not args.resume:
        return None
    saved = load_config(args.out, CONFIG_FILE)
    if saved is not None and saved.get("kind") != RUN_KIND:
        raise RunError(f"{args.out} holds a run of another kind ({saved.get('kind')!r}), not a pruning run")
    return saved


def print_schedule(arch, config, widths, num_samples: int, prefix: str = "", file=None):
    """The effective units per step and Q (and where they came from), and the warning of a run that
    cannot record enough points for a fit: before any training."""
    from pyns.neuralscale.prune.defaults import plan_schedule

    plan = plan_schedule(arch, config, arch.widths(widths), num_samples)
    for line in plan.lines():
        print(prefix + line, file=file or sys.stdout, flush=True)
    for note in plan.warnings:
        print(f"pyns: warning: {prefix}{note}", file=sys.stderr, flush=True)
    return plan


def run(args: argparse.Namespace) -> int:
    from pyns.neuralscale.prune.run import prune
    from pyns.neuralscale.prune.runfolder import TRAJECTORY_FILE
    from pyns.neuralscale.prune.schedule import PruneConfig
    from pyns.data.augment_spec import describe_run_augment

    check_out_folder(args.out)  # before loading data and training, not after
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
        # is compared with the saved config (a difference is refused by `prune`). Derived values are
        # derived again (to the same numbers), so config.json keeps saying where they came from.
        rederive = {name: None for name in saved.get("schedule", {}).get("derived", {})}
        config = PruneConfig.from_dict({**saved.get("prune", {}), **rederive, **overrides})
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
    weights = args.weights
    if weights is None and saved is not None and saved.get("weights"):
        saved_weights = saved["weights"]  # resuming: the start the run was begun from (checked again)
        weights = saved_weights.get("path") or saved_weights.get("spec")
        if weights is None:
            raise RunError(f"{args.out} was started from a torch module ({saved_weights.get('module')}) in "
                           "Python; resume it from Python with the same module")
    data = {"name": train_set.name, "root": root, "options": data_options, "num_samples": len(train_set),
            "num_classes": train_set.num_classes}
    threads = apply_threads(args)
    augment = describe_run_augment(config.augment, train_set.name)
    out = sys.stderr if args.json else sys.stdout  # --json: stdout holds the JSON object alone
    print(run_header(arch, train_set, seed=config.seed, threads=threads, device=args.device, augment=augment),
          file=out, flush=True)
    plan = print_schedule(arch, config, widths, len(train_set), file=out)
    try:
        with warnings.catch_warnings():
            from pyns.neuralscale.prune.defaults import ScheduleWarning

            warnings.simplefilter("ignore", ScheduleWarning)  # printed above, before training
            result = prune(arch, train_set, config, args.out, mode=mode, device=args.device,
                           resume=args.resume, widths=widths, data=data, progress=not args.quiet,
                           weights=weights)
    except KeyboardInterrupt:
        print(f"pyns: the last checkpoint is in {args.out}; continue with the same command and --resume",
              file=sys.stderr)
        raise

    profile_path, notes = None, []
    if not args.no_fit and result.recorded:
        from pyns.neuralscale.prune.runfolder import fit_run

        profile_path, notes = fit_run(result.run_dir)
    if args.json:
        from pyns.cli.common import print_json

        print_json({"arch": arch.name, "data": data, "seed": config.seed, "threads": threads, "augment": augment,
                    "mode": mode, "done": result.done, "stop_reason": result.stop_reason, "steps": result.steps,
                    "params": result.params, "macs": result.macs, "widths": result.widths,
                    "seconds": result.seconds, "trajectory": str(result.run_dir / TRAJECTORY_FILE),
                    "rows": len(result.rows), "recorded": len(result.recorded),
                    "schedule": plan.to_dict(),
                    "profile": None if profile_path is None else str(profile_path),
                    "warnings": list(plan.warnings) + list(notes)})
        return 0
    state = "finished" if result.done else "stopped"
    print(f"{arch.name} on {train_set.name}: {state} after {result.steps} prune steps "
          f"({result.stop_reason or 'not finished'})")
    print(f"final: params {result.params:,} ({human(result.params)}), MACs {result.macs:,} ({human(result.macs)})"
          " (MACs: multiply-accumulates of conv/linear layers at batch 1)")
    print(f"trajectory: {result.run_dir / TRAJECTORY_FILE} ({len(result.rows)} rows, "
          f"{len(result.recorded)} recorded)")
    if not args.no_fit:
        if result.recorded:
            for note in notes:
                print(f"pyns: warning: {note}", file=sys.stderr)
            print(f"profile: {profile_path}")
        else:
            print("profile: not fitted (no recorded rows: recording starts once every searchable width "
                  "has lost a unit)")
    return 0
