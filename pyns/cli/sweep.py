"""`pyns sweep ARCH --data NAME --width-ratios ... --methods ... --seeds N --out DIR`: the paper's Table 1.

Trains every (method, budget, seed) cell (see pyns.sweep.run), skipping cells already complete, then writes
table.md, table.csv and Figures 4/5 into DIR. Budgets are the params (or MACs) of the default network
scaled uniformly by each ratio, as in the paper. NeuralScale uses the final profile of a descent run
(`--descent RUN_DIR`: RUN_DIR/profile.json) or `--profile FILE`; MorphNet uses the descent run's first
pruning (RUN_DIR/iter-00) or `--trajectory PATH`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyns.cli.common import (add_arch_options, add_augment_options, add_data_options, augment_setting,
                             check_out_folder, note_ignored_root, parse_assignments, print_json)
from pyns.errors import PynsError, RunError


def register(sub) -> None:
    p = sub.add_parser(
        "sweep", help="train every (method, budget, seed) and write the paper's Table 1 and Figures 4/5",
        description="Train uniform, MorphNet, NeuralScale and Li et al. networks at several budgets and seeds "
                    "with the paper's recipe, then tabulate params, latency and accuracy (mean ± std over "
                    "seeds; best over epochs as the paper reports, and final) as table.md / table.csv and "
                    "plot accuracy against params and latency. Each cell is resumable and skipped when done.")
    add_arch_options(p)
    add_data_options(p)
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder (a rerun continues it)")
    p.add_argument("--width-ratios", required=True, metavar="A:B:S|R1,R2,...",
                   help="width ratios defining the budgets: start:stop:step (stop included) or a comma list")
    p.add_argument("--methods", default="uniform,morphnet,neuralscale",
                   help="comma list of uniform, morphnet, neuralscale, li (default: uniform,morphnet,neuralscale)")
    p.add_argument("--seeds", default="5", metavar="N|S1,S2,...",
                   help="number of seeds (0..N-1) or a comma list of seeds (default 5, as the paper)")
    p.add_argument("--metric", choices=("params", "macs"), default="params",
                   help="the budget's cost metric (params, as the paper)")
    source = p.add_argument_group("where the NeuralScale and MorphNet widths come from")
    source.add_argument("--descent", metavar="RUN_DIR", help="a `pyns descent` run: profile.json for neuralscale, "
                                                            "iter-00/ for morphnet")
    source.add_argument("--profile", metavar="FILE", help="a profile for neuralscale (overrides --descent's)")
    source.add_argument("--trajectory", metavar="PATH", help="a trajectory.jsonl or prune run folder for morphnet "
                                                             "(overrides --descent's iter-00)")
    source.add_argument("--allow-fallback", action="store_true",
                        help="train neuralscale cells even when the profile fell back to uniform scaling (too few "
                             "trajectory points); they are then uniform networks, marked so in the table. "
                             "Without it such a profile is refused")
    source.add_argument("--morphnet-fraction", type=float, default=0.5, metavar="F",
                        help="take the MorphNet configuration where this fraction of the filters remains (0.5)")
    recipe = p.add_argument_group("recipe of every cell (defaults: the NeuralScale paper's)")
    recipe.add_argument("--epochs", type=int, help="epochs (300; TinyImageNet 150)")
    recipe.add_argument("--lr", type=float, help="initial learning rate (0.1)")
    recipe.add_argument("--milestones", metavar="E1,E2,...", help="lr x gamma after these epochs (100,200,250)")
    recipe.add_argument("--gamma", type=float, help="lr factor at each milestone (0.1)")
    recipe.add_argument("--momentum", type=float, help="SGD momentum (0.5)")
    recipe.add_argument("--weight-decay", type=float, metavar="WD", help="SGD weight decay (5e-4)")
    recipe.add_argument("--batch-size", type=int, metavar="B", help="batch size (128)")
    add_augment_options(recipe)
    recipe.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    recipe.add_argument("--amp-dtype", choices=("auto", "bfloat16", "float16"), help="mixed precision type")
    recipe.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="NHWC memory layout (default: on the CPU, where steps are 1.2-1.4x faster with "
                             "pyns' BatchNorm; off on CUDA, where it speeds up tensor-core convs)")
    recipe.add_argument("--compile", action="store_true", help="torch.compile every model")
    recipe.add_argument("--deterministic", action="store_true", help="deterministic kernels")
    li = p.add_argument_group("Li et al. fine-tuning")
    li.add_argument("--li-epochs", type=int, metavar="N", help="fine-tuning epochs (40; TinyImageNet 20)")
    li.add_argument("--li-lr", type=float, default=0.001, metavar="LR", help="fine-tuning learning rate (0.001)")
    run_opts = p.add_argument_group("execution")
    run_opts.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (serial executor)")
    run_opts.add_argument("--executor", choices=("serial", "ray"), default="serial",
                          help="run cells one after another here (default), or as Ray tasks")
    run_opts.add_argument("--ray-address", metavar="ADDR",
                          help="Ray cluster to join (e.g. auto); default: start a local Ray instance")
    run_opts.add_argument("--ray-cpus", type=float, default=1, metavar="N", help="CPUs per cell task (1)")
    run_opts.add_argument("--ray-gpus", type=float, default=0, metavar="N", help="GPUs per cell task (0)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement of every cell "
                                                            "(as `pyns train --no-latency`; Figure 5 stays empty)")
    p.add_argument("--json", action="store_true", help="print the table rows as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no per-cell lines")
    p.set_defaults(handler=run)


def _seeds(text: str) -> list[int]:
    try:
        if "," in text:
            return [int(v) for v in text.split(",") if v.strip()]
        count = int(text)
    except ValueError:
        raise PynsError(f"--seeds: expected a count such as 5 or a list such as 0,1,2, got `{text}`") from None
    if count < 1:
        raise PynsError(f"--seeds must be at least 1, got {count}")
    return list(range(count))


def _sources(args: argparse.Namespace, methods: list[str]) -> tuple[str | None, str | None]:
    """(profile for neuralscale, trajectory for morphnet), each only when that method runs."""
    profile = args.profile if "neuralscale" in methods else None
    trajectory = args.trajectory if "morphnet" in methods else None
    if args.descent is not None:
        run_dir = Path(args.descent)
        if not run_dir.is_dir():
            raise RunError(f"--descent {run_dir}: no such run folder")
        if profile is None and "neuralscale" in methods:
            profile = str(run_dir / "profile.json")
            if not Path(profile).is_file():
                raise RunError(f"--descent {run_dir} has no final profile (expected {profile}); has the "
                               "descent finished?")
        if trajectory is None and "morphnet" in methods:
            trajectory = str(run_dir / "iter-00")
    return profile, trajectory


def run(args: argparse.Namespace) -> int:
    from pyns.cli.train import device_from_args, recipe_from_args
    from pyns.sweep.run import run_sweep
    from pyns.sweep.plan import SweepConfig, parse_ratios
    from pyns.train.run import ArchSpec, DataSpec

    check_out_folder(args.out)  # before loading data and training, not after
    note_ignored_root(args.data, args.root)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    profile, trajectory = _sources(args, methods)
    device = device_from_args(args.device)
    config = SweepConfig(
        arch=ArchSpec(args.arch, parse_assignments(args.sets, "--set"), args.variant, args.policy),
        data=DataSpec(args.data, args.root, parse_assignments(args.data_options, "--data-option")),
        recipe=recipe_from_args(args, args.data),
        ratios=parse_ratios(args.width_ratios), methods=methods, seeds=_seeds(args.seeds), metric=args.metric,
        profile=profile, trajectory=trajectory,
        morphnet_fraction=args.morphnet_fraction, li_epochs=args.li_epochs, li_lr=args.li_lr,
        augment=True if augment_setting(args) is None else augment_setting(args),
        device=None if device is None else str(device), latency=not args.no_latency,
        allow_fallback=args.allow_fallback)
    say = (lambda line: None) if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    # Warnings are printed even with --quiet: they say what the table's numbers mean.
    warn = lambda line: print(f"pyns: warning: {line}", file=sys.stderr, flush=True)  # noqa: E731
    result = run_sweep(config, args.out, executor=args.executor, ray_address=args.ray_address,
                       ray_cpus_per_cell=args.ray_cpus, ray_gpus_per_cell=args.ray_gpus, say=say,
                       cell_bar=not args.quiet, warn=warn)
    if args.json:
        print_json(result.rows)
        return 0
    print((Path(args.out) / "table.md").read_text(), end="")
    print(f"\n{result.ran} cell(s) trained, {result.skipped} already complete; files: "
          + ", ".join(str(p) for p in result.files.values()))
    return 0
