"""`pyns descent ARCH --data NAME --out RUN_DIR`: NeuralScale architecture descent (Algorithm 4)."""
from __future__ import annotations

import argparse
import sys
import warnings

from pyns.cli.common import add_arch_options, apply_threads, check_out_folder, human, parse_assignments
from pyns.cli.run_options import (add_run_options, add_schedule_options, load_arch_and_data, run_header,
                                  schedule_overrides)
from pyns.errors import PynsError


def register(sub) -> None:
    p = sub.add_parser(
        "descent", help="architecture descent: generate -> prune -> fit, repeated",
        description="NeuralScale architecture descent: each iteration builds a freshly initialised network at "
                    "the target size from the previous iteration's power laws, prunes it (Algorithm 1) and "
                    "refits (Algorithm 2). Iteration 0 starts from the architecture's own proportions "
                    "(MorphNet-like); the last is NeuralScale. Every iteration's trajectory and profile are "
                    "kept in RUN_DIR/iter-NN/; RUN_DIR/profile.json is the latest profile.")
    add_arch_options(p)
    add_run_options(p)
    p.add_argument("--iterations", type=int, default=15, metavar="N", help="descent iterations (15)")
    p.add_argument("--target", choices=("params", "macs"), default="params",
                   help="what τ and the target size measure (params)")
    p.add_argument("--target-size", metavar="BUDGET",
                   help="target size in that metric: 1.2M, 500k, 0.5x (default: the default network's)")
    p.add_argument("--until-change", metavar="PCT",
                   help="stop early once the configuration moves less than this, e.g. 1%% or 0.01")
    p.add_argument("--weights", metavar="FILE|MODEL",
                   help="start iteration 0 from these weights (as for `pyns prune --weights`; the default "
                        "target size); later iterations are freshly initialised")
    add_schedule_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print one JSON object (every iteration) on stdout; "
                                                       "progress lines go to stderr")
    p.set_defaults(handler=run)


def _fraction(text: str | None) -> float | None:
    if text is None:
        return None
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise PynsError(f"--until-change: `{text}` is not a percentage (e.g. 1%) or a fraction (0.01)") from None
    return value


def run(args: argparse.Namespace) -> int:
    from pyns.neuralscale.descent import CONFIG_FILE, RUN_KIND, DescentConfig, descent
    from pyns.data.augment_spec import describe_run_augment
    from pyns.neuralscale.prune.schedule import PruneConfig
    from pyns.runfiles import load_config
    from pyns.scaling.budget import parse_budget

    check_out_folder(args.out)  # before loading data and training, not after
    saved = load_config(args.out, CONFIG_FILE) if args.resume else None
    if saved is not None and saved.get("kind") != RUN_KIND:
        raise PynsError(f"{args.out} holds a run of another kind ({saved.get('kind')!r}), not a descent run")
    arch, train_set = load_arch_and_data(args, None, args.root,
                                         parse_assignments(args.data_options, "--data-option"))
    overrides = schedule_overrides(args)
    if saved is not None:
        prune_config = PruneConfig.from_dict({**saved.get("prune", {}), **overrides})
    else:
        prune_config = PruneConfig.for_dataset(args.data, **overrides)
    target = None
    if args.target_size is not None:
        default_cost = getattr(arch.count(), args.target)
        target = float(parse_budget(args.target_size, "--target-size").resolve(default_cost))
    config = DescentConfig(iterations=args.iterations, metric=args.target, target=target,
                           until_change=_fraction(args.until_change), prune=prune_config)

    threads = apply_threads(args)
    augment = describe_run_augment(prune_config.augment, train_set.name)
    print(run_header(arch, train_set, seed=prune_config.seed, threads=threads, device=args.device,
                     augment=augment), file=sys.stderr if args.json else sys.stdout, flush=True)

    def log(line: str) -> None:
        to_stderr = args.json or line.startswith("pyns:")  # --json: stdout holds the JSON object alone
        print(line, file=sys.stderr if to_stderr else sys.stdout, flush=True)

    try:
        with warnings.catch_warnings():
            from pyns.scaling.profile import ScalingWarning

            # `log` prints every warning as it happens (`pyns: warning: iteration N: ...`); Python's
            # own copy of it would only repeat it.
            warnings.simplefilter("ignore", ScalingWarning)
            result = descent(arch, train_set, config, args.out, device=args.device, resume=args.resume,
                             weights=args.weights,
                             progress=not args.quiet, log=log)
    except KeyboardInterrupt:
        print(f"pyns: progress is saved in {args.out}; continue with the same command and --resume",
              file=sys.stderr)
        raise
    if args.json:
        from pyns.cli.common import print_json

        print_json({"arch": arch.name, "data": train_set.name, "seed": prune_config.seed, "threads": threads,
                    "augment": augment, "target": args.target, "stopped_early": result.stopped_early,
                    "iterations": [{"iteration": it.iteration, "start_widths": it.start_widths,
                                    "params": it.params, "macs": it.macs, "change": it.change,
                                    "profile": it.profile_path, "stop_reason": it.stop_reason,
                                    "warnings": it.warnings}
                                   for it in result.iterations],
                    "profile": str(result.out_dir / "profile.json"), "warnings": result.warnings})
        return 0
    print(f"\n{arch.name}: {len(result.iterations)} descent iterations"
          + (" (stopped early: the configuration stopped moving)" if result.stopped_early else ""))
    symbols = arch.searchable
    name_w = max(len(s) for s in symbols + ["iteration"])
    print(f"{'iteration':<{name_w}}  " + "  ".join(f"{it.iteration:>6}" for it in result.iterations))
    for sym in symbols:
        print(f"{sym:<{name_w}}  " + "  ".join(f"{it.start_widths[sym]:>6}" for it in result.iterations))
    print(f"{args.target:<{name_w}}  " + "  ".join(f"{human(getattr(it, args.target)):>6}"
                                                 for it in result.iterations))
    print(f"{'change':<{name_w}}  " + "  ".join(f"{'-' if it.change is None else f'{100 * it.change:.1f}%':>6}"
                                              for it in result.iterations))
    print(f"profile: {result.out_dir / 'profile.json'}"
          + (" (a uniform fallback: too few recorded points to fit power laws)" if result.profile.fallback else ""))
    if result.warnings:
        print(f"{len(result.warnings)} warning(s), printed above as `pyns: warning:` and kept per iteration in "
              f"{result.out_dir / 'summary.jsonl'}")
    return 0
