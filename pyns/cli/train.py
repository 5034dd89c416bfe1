"""`pyns train ARCH --data NAME --out RUN_DIR`: train a network from scratch with the paper's recipe.

The widths come from exactly one of: `--widths k=v,...` (others default), `--ratio R` (uniform
scaling), `--profile P` with `--params N` and/or `--macs N` (NeuralScale widths at a budget), or a budget
alone (the uniformly scaled network that fits it); with none, the default network. Training follows
the NeuralScale paper's recipe (SGD lr 0.1, momentum 0.5, weight decay 5e-4, batch 128, 300 epochs with lr x0.1 at 100/200/250;
TinyImageNet 150 epochs, x0.1 at 50/100), every number an option. Under `torchrun` the run uses
DistributedDataParallel (pyns.train.loop) and only rank 0 prints and writes.

Prints and writes RUN_DIR/result.json: final and best test accuracy (best = max over epochs, as the
paper reports), params, MACs, latency measured the paper's way and images/s.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pyns.cli.common import (add_arch_options, add_augment_options, add_data_options, add_threads_option,
                             apply_threads, augment_setting, check_out_folder, human, note_ignored_root,
                             parse_assignments, print_data_notes, print_json)
from pyns.data.names import canonical_name
from pyns.errors import PynsError, RunError


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train a network from scratch with the paper's recipe; report accuracy, cost, latency",
        description="Train ARCH at the chosen widths from scratch (the NeuralScale paper's recipe by default) and report the "
                    "final and the best test accuracy (best = maximum over epochs, as the paper reports), "
                    "params, MACs, latency (batch 100, 20 warm-up, mean of 80) and images/s. Writes "
                    "checkpoints, metrics.jsonl and result.json into RUN_DIR. Runs under torchrun with DDP.")
    add_arch_options(p)
    widths = p.add_argument_group("widths (choose one; default: the default network)")
    widths.add_argument("--widths", action="append", default=[], metavar="K=V,...",
                        help="explicit widths, e.g. --widths c1=32,c2=64 (others keep their defaults)")
    widths.add_argument("--ratio", type=float, metavar="R", help="every searchable width scaled uniformly by R")
    widths.add_argument("--profile", metavar="P", help="a scaling profile (profile.json from `pyns fit` or "
                                                       "`pyns descent`); needs --params and/or --macs")
    widths.add_argument("--params", metavar="N", help="parameter budget, e.g. 0.58M or 0.25x (uniform "
                                                      "scaling unless --profile is given)")
    widths.add_argument("--macs", metavar="N", help="MACs budget, e.g. 40M or 0.5x")
    add_data_options(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from its checkpoint")
    p.add_argument("--overwrite", action="store_true", help="start over in a RUN_DIR that holds a run")
    p.add_argument("--device", default="auto",
                   help="auto (this process's GPU where there is one, else the CPU), cpu, cuda or cuda:N")
    add_threads_option(p)
    recipe = p.add_argument_group("recipe (defaults: the NeuralScale paper's; TinyImageNet: 150 epochs, milestones 50,100)")
    recipe.add_argument("--epochs", type=int, help="epochs (300)")
    recipe.add_argument("--lr", type=float, help="initial learning rate (0.1)")
    recipe.add_argument("--milestones", metavar="E1,E2,...",
                        help="epochs after which the lr is multiplied by --gamma (100,200,250; `none` for none)")
    recipe.add_argument("--gamma", type=float, help="lr factor at each milestone (0.1)")
    recipe.add_argument("--momentum", type=float, help="SGD momentum (0.5)")
    recipe.add_argument("--weight-decay", type=float, metavar="WD", help="SGD weight decay (5e-4)")
    recipe.add_argument("--batch-size", type=int, metavar="B", help="global batch size (128), split over processes")
    recipe.add_argument("--seed", type=int, default=0, help="random seed for initialisation and data order (0)")
    add_augment_options(recipe)
    recipe.add_argument("--amp", action="store_true", help="mixed precision (CUDA only)")
    recipe.add_argument("--amp-dtype", choices=("auto", "bfloat16", "float16"), help="mixed precision type (auto)")
    recipe.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                        help="NHWC memory layout (default: on the CPU, where steps are 1.2-1.4x faster with "
                             "pyns' BatchNorm; off on CUDA, where it speeds up tensor-core convs)")
    recipe.add_argument("--compile", action="store_true", help="torch.compile the model")
    recipe.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--json", action="store_true", help="print result.json instead of the summary")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def _milestones(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("none", ""):
        return ()
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise PynsError(f"--milestones: expected epochs such as 100,200,250, got `{text}`") from None


def recipe_from_args(args: argparse.Namespace, dataset: str):
    """The dataset's paper recipe with every option the command line sets."""
    from pyns.train.recipe import TrainRecipe

    overrides: dict[str, Any] = {}
    for flag in ("epochs", "lr", "gamma", "momentum", "weight_decay", "batch_size", "seed", "amp_dtype"):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[flag] = value
    if getattr(args, "milestones", None) is not None:
        overrides["milestones"] = _milestones(args.milestones)
    for flag in ("amp", "compile", "deterministic"):
        if getattr(args, flag, False):
            overrides[flag] = True
    if getattr(args, "channels_last", None) is not None:  # --channels-last / --no-channels-last
        overrides["channels_last"] = args.channels_last
    key = canonical_name(dataset)
    if key == "tinyimagenet":
        return TrainRecipe.tinyimagenet(**overrides)
    return TrainRecipe.cifar(**overrides)


def device_from_args(name: str):
    """None for auto (the process that runs the job picks its GPU or the CPU), else a torch device."""
    from pyns.train.distributed import parse_device

    return parse_device(name, defer_auto=True)


def choose_widths(arch, args: argparse.Namespace) -> tuple[dict[str, int], dict[str, Any]]:
    """(widths, how they were chosen) from the mutually exclusive width options."""
    from pyns.scaling.solve import solve_budget

    budget = args.params is not None or args.macs is not None
    chosen = [name for name, given in (("--widths", bool(args.widths)), ("--ratio", args.ratio is not None),
                                       ("--params/--macs", budget)) if given]
    if len(chosen) > 1:
        raise PynsError(f"{' and '.join(chosen)} both set the widths; give only one of --widths, --ratio, or a "
                        "budget (--params/--macs, with --profile for NeuralScale widths)")
    if args.profile is not None and not budget:
        raise PynsError("--profile needs a budget: add --params N and/or --macs N")
    if args.widths:
        values = parse_assignments(args.widths, "--widths")
        return arch.widths(values), {"method": "widths"}
    if args.ratio is not None:
        if not 0 < args.ratio <= 100:
            raise PynsError(f"--ratio must be in (0, 100], got {args.ratio}")
        return arch.uniform_widths(args.ratio), {"method": "ratio", "ratio": args.ratio}
    if budget:
        method = "profile" if args.profile is not None else "uniform"
        result = solve_budget(arch, args.params, args.macs, method=method, profile=args.profile)
        return arch.widths(result.widths), {"method": "neuralscale" if method == "profile" else "uniform",
                                            "profile": args.profile, "solve": result.to_dict()}
    return arch.defaults, {"method": "default"}


def _saved_widths(args: argparse.Namespace, arch, widths: dict[str, int], how: dict[str, Any]) -> dict[str, int]:
    """On --resume, the widths of the run being continued (and a refusal if the options say otherwise)."""
    from pyns.runfiles import load_config
    from pyns.train.run import RUN_FILE

    saved = load_config(args.out, RUN_FILE) if args.resume else None
    if saved is None:
        return widths
    saved_widths = arch.widths(saved.get("widths"))
    if how["method"] == "default" and not args.widths:
        return saved_widths  # nothing stated: continue with what the run was started with
    if saved_widths != widths:
        raise RunError(f"cannot resume the run in {args.out} with other widths: it trained {saved_widths}, "
                       f"the options give {widths}")
    return widths


def run(args: argparse.Namespace) -> int:
    import torch

    from pyns.data.arrays import derive_seed
    from pyns.train.distributed import cleanup_distributed, distributed_context
    from pyns.runfiles import atomic_write_json, atomic_write_text
    from pyns.runlock import lock_folder
    from pyns.safewrite import make_folder
    from pyns.train.run import ARCH_FILE, RUN_FILE, ArchSpec, DataSpec, run_training

    check_out_folder(args.out)  # before loading data and training, not after
    arch_spec = ArchSpec(args.arch, parse_assignments(args.sets, "--set"), args.variant, args.policy)
    data = DataSpec(args.data, args.root, parse_assignments(args.data_options, "--data-option"))
    augment = augment_setting(args)
    augment = True if augment is None else augment
    note_ignored_root(args.data, args.root)
    arch, train_set, test_set = arch_spec.load_for(data)
    print_data_notes(train_set, test_set)
    widths, how = choose_widths(arch, args)
    widths = _saved_widths(args, arch, widths, how)
    recipe = recipe_from_args(args, train_set.name)
    device = device_from_args(args.device)
    main = distributed_context().is_main
    threads = apply_threads(args)
    # The folder is this process's from before run.json is written to the end of training: a second
    # `pyns train` on it stops here (RunBusy names this process) instead of mixing two runs. Taken before
    # the settings line, so that a refused run prints its error alone.
    lock = lock_folder(make_folder(args.out)) if main else None
    try:
        if main and not args.json:
            from pyns.cli.run_options import run_header
            from pyns.data.augment_spec import describe_run_augment

            print(run_header(arch, train_set, seed=recipe.seed, threads=threads, device=args.device,
                             augment=describe_run_augment(augment, train_set.name)), flush=True)
        torch.manual_seed(derive_seed(recipe.seed, "train-init"))  # same initial weights on every rank
        model = arch.build(widths)
        if not args.resume:
            # A finished run is refused unless --overwrite, before run.json is written over it. Every rank
            # checks (a rank that stopped alone would leave the others waiting for it forever).
            from pyns.train.loop import CHECKPOINT_FILE

            if (Path(args.out) / CHECKPOINT_FILE).exists() and not args.overwrite:
                raise RunError(f"{args.out} already holds a training run",
                               hint="pass --resume to continue it, --overwrite to start over, or choose another --out")
        if main and not args.resume:
            make_folder(args.out)
            # The source text and its settings make the folder self-contained (`pyns export RUN_DIR` rebuilds it).
            atomic_write_text(Path(args.out) / ARCH_FILE, arch.source.text)
            atomic_write_json(Path(args.out) / RUN_FILE, {"arch": arch.name, "widths": widths, "how": how,
                                                          "source": {"file": arch.source.filename,
                                                                     "variant": arch.variant, "params": arch.params,
                                                                     "policy": arch.policy.name},
                                                          "data": {"name": data.name, "root": data.root,
                                                                   "options": data.options}})
        info = {"how": how, "threads": threads,
                "data": {"name": train_set.name, "root": data.root, "options": data.options,
                         "train_samples": len(train_set), "test_samples": len(test_set)}}
        try:
            record = run_training(arch, model, train_set, test_set, recipe, args.out, resume=args.resume,
                                  overwrite=args.overwrite, device=device, augment=augment, info=info,
                                  latency=not args.no_latency, progress=not args.quiet)
        except KeyboardInterrupt:
            if main:
                print(f"pyns: the last finished epoch is saved in {args.out}; continue with the same command and "
                      "--resume", file=sys.stderr)
            raise
        finally:
            cleanup_distributed()
    finally:
        if lock is not None:
            lock.release()
    if record is None:  # a rank other than 0 under torchrun
        return 0
    if args.json:
        print_json(record)
        return 0
    _print_summary(arch, train_set.name, record, args.out)
    return 0


def _print_summary(arch, data_name: str, record: dict[str, Any], out: str) -> None:
    widths = " ".join(f"{k}={v}" for k, v in record["widths"].items())
    print(f"{arch.name} on {data_name}: widths {widths}")
    print(f"params {record['params']:,} ({human(record['params'])}), MACs {record['macs']:,} "
          f"({human(record['macs'])}) (multiply-accumulates of conv and linear layers, one image)")
    print(f"final test accuracy: {100 * record['final_test_acc']:.2f}% (after epoch {record['epochs']})")
    print(f"best test accuracy (max over epochs, as the paper reports): {100 * record['best_test_acc']:.2f}% "
          f"(epoch {record['best_epoch']})")
    latency = record.get("latency")
    if latency:
        print(f"latency: {latency['ms_per_batch']:.2f} ± {latency['std_ms']:.2f} ms per batch of "
              f"{latency['batch_size']} on {latency['device']} ({latency['images_per_s']:,.0f} images/s; mean of "
              f"{latency['iters']} batches after {latency['warmup']} warm-up)")
    if record.get("train_images_per_s"):
        print(f"training: {record['train_images_per_s']:,.0f} images/s (training and test pass wall time)")
    print(f"result: {out}/result.json")
