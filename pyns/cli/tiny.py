"""`pyns tiny`: TinyNet's resolution, depth and width for a MACs budget; sample, train and fit your own formula.

Three forms share the command:

    pyns tiny ARCH --macs 100M ...          (shorthand for `pyns tiny solve ARCH ...`)
    pyns tiny sample ARCH --data NAME --out DIR ...
    pyns tiny fit DIR [--out FORMULA]

argparse cannot give a command both a positional and subcommands, so `tiny` has the subcommands solve, sample
and fit, and a first word that names none of them is taken as the ARCH of `solve`.
"""
from __future__ import annotations

import argparse
import os
import math
from pathlib import Path

from pyns.cli.common import add_arch_options, arch_from_args, check_out_file, check_out_folder, human, print_json
from pyns.errors import PynsError

CONVENTION = ("params = trainable parameters; MACs = multiply-accumulates of conv/linear layers at batch 1 "
              "(FLOPs = 2 x MACs)")
SUBCOMMANDS = ("solve", "sample", "fit")


class _AnyName(dict):
    """Subcommand table that accepts any first word, so argparse's choice check lets an ARCH through."""

    def __contains__(self, key) -> bool:
        return True


class _DefaultSubcommand(argparse._SubParsersAction):
    """Subparsers whose first word falls back to `solve` when it is not a subcommand name."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.choices = _AnyName(self._name_parser_map)

    def __call__(self, parser, namespace, values, option_string=None):
        if values and values[0] not in self._name_parser_map.keys():
            values = ["solve", *values]
        super().__call__(parser, namespace, values, option_string)


def _pair(text: str, what: str) -> tuple[float, float]:
    parts = text.split(":")
    if len(parts) != 2:
        raise PynsError(f"{what}: expected LO:HI such as 0.35:2.8, got `{text}`")
    try:
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise PynsError(f"{what}: expected two numbers LO:HI, got `{text}`") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise PynsError(f"{what}: need 0 < LO < HI, got `{text}`")
    return lo, hi


def register(sub) -> None:
    p = sub.add_parser(
        "tiny", help="TinyNet: resolution, depth and width for a MACs budget",
        description="TinyNet (Model Rubik's Cube): twist resolution r, depth d and width w of a network to fit a "
                    "MACs budget. `pyns tiny ARCH --macs 100M` is short for `pyns tiny solve ARCH --macs 100M`. "
                    + CONVENTION + ".",
        epilog="Run `pyns tiny solve --help`, `pyns tiny sample --help` or `pyns tiny fit --help` for options.")
    tiny_sub = p.add_subparsers(dest="tiny_command", metavar="{ARCH,solve,sample,fit}",
                                action=_DefaultSubcommand, parser_class=type(p))
    _register_solve(tiny_sub)
    _register_sample(tiny_sub)
    _register_fit(tiny_sub)

    def show_help(_args: argparse.Namespace) -> int:
        p.print_help()
        return 2

    p.set_defaults(handler=show_help)


# ---- solve -------------------------------------------------------------------------------------------


def _register_solve(tiny_sub) -> None:
    from pyns.tinynet.solve import METHODS

    p = tiny_sub.add_parser(
        "solve", help="r, d, w for a budget (the default form: pyns tiny ARCH ...)",
        description="Resolution, depth and width for a MACs budget. Method tiny (default): r and d from the "
                    "tiny formula's Gaussian processes c -> r, c -> d (c = budget / MACs of the default "
                    "network; the shipped formula is fitted on the five released TinyNets), then the largest "
                    "width whose network fits, solved exactly on the real network; the paper's closed form "
                    "w = sqrt(c / (r^2 d)) is shown beside it. Baselines: giant (inverse EfficientNet compound "
                    "scaling d = 1.2^phi, w = 1.1^phi, r = 1.15^phi with continuous phi; the paper's "
                    "EfficientNet-B^-1..B^-4 are giant at 200M, 100M, 50M, 25M MACs), r, d, w (one "
                    "dimension alone). Policy: TinyNet's (depth round, stem fixed, head floor) for tiny/r/d/w, "
                    "efficientnet_round (EfficientNet's widths, stem and head scaled, depth round as in the "
                    "TinyNet code) for giant, unless --policy is given. "
                    + CONVENTION + ".")
    add_arch_options(p)
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--macs", metavar="N",
                        help="MACs budget: 100M, 1.2G, 385814752, or 0.25x (of the default network)")
    budget.add_argument("--flops", metavar="N", help="FLOPs budget (= 2 x MACs), e.g. 200M or 0.25x")
    p.add_argument("--method", choices=METHODS, default="tiny",
                   help="tiny (default), giant, or one dimension alone: r, d, w")
    p.add_argument("--formula", metavar="FILE",
                   help="a tiny-formula file from `pyns tiny fit` (default: the shipped formula fitted on the "
                        "released TinyNets)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", metavar="FILE",
                   help="write a resolved .arch file: repeat counts, resolution and widths written in")
    p.set_defaults(handler=run_solve)


def run_solve(args: argparse.Namespace) -> int:
    from pyns.tinynet.solve import solve_tiny, write_resolved_tiny

    check_out_file(args.out)
    arch = arch_from_args(args)
    if args.formula is not None and args.method != "tiny":
        raise PynsError(f"--formula is only used by the tiny method, not {args.method}")
    result = solve_tiny(arch, args.macs, flops=args.flops, method=args.method, formula=args.formula,
                        policy=args.policy)
    if args.out:
        write_resolved_tiny(args.out, arch, result)
    if args.json:
        data = result.to_dict()
        data["convention"] = CONVENTION
        if args.out:
            data["out"] = args.out
        print_json(data)
        return 0
    _print_solve(result, show_flops=args.flops is not None)
    if args.out:
        print(f"resolved .arch written to {args.out} (count it with `pyns count {args.out}`)")
    return 0


def _print_solve(res, *, show_flops: bool) -> None:
    print(f"{res.arch}  method {res.method}  policy {res.policy}")
    print(f"budget: {res.budget_macs:,.0f} MACs ({res.budget_text}) = c {res.c:.4f} x the default network "
          f"({res.base_macs:,} MACs)")
    if res.formula_source:
        print(f"formula: {res.formula_source}")
    std = lambda s: f"  (GP std {s:.4f})" if s is not None else ""  # noqa: E731
    print(f"r = {res.r:.4f}{std(res.r_std)}  ->  resolution {res.resolution}x{res.resolution} "
          f"(default {res.base_resolution})")
    base = ", ".join(str(s.base) for s in res.stages)
    scaled = ", ".join(str(s.repeats) for s in res.stages)
    depth_line = f"d = {res.d:.4f}{std(res.d_std)}"
    print(depth_line + (f"  ->  repeats per stage {scaled} (default {base})" if res.stages
                        else "  (no top-level repeat stages)"))
    width_line = f"w = {res.w:.4f}"
    if res.w_range is not None:
        lo, hi = res.w_range
        width_line += " solved on the network" + (f" (every w in [{lo:.4f}, {hi:.4f}) gives these widths)"
                                                  if hi is not None else "")
    if res.closed_form_w is not None:
        width_line += f";  closed form sqrt(c/(r^2 d)) = {res.closed_form_w:.4f}"
    print(width_line)
    if res.phi is not None:
        from pyns.tinynet.solve import B_MINUS_MACS

        budgets = ", ".join(f"{m // 1_000_000}M" for m in B_MINUS_MACS.values())
        print(f"phi = {res.phi:.4f}  (the largest compound-scaling phi within the budget; the paper's "
              f"EfficientNet-B^-1..B^-4 are this method at {budgets} MACs, not phi = -k)")
    print("widths: " + ", ".join(f"{k}={v}" for k, v in res.widths.items() if k in res.searchable))
    print(f"params: {res.params:,} ({human(res.params)})")
    flops = f"   FLOPs: {res.flops:,} ({human(res.flops)})" if show_flops else ""
    print(f"MACs:   {res.macs:,} ({human(res.macs)}) = c {res.achieved_c:.4f}, "
          f"{100 * res.macs / res.budget_macs:.2f}% of the budget{flops}")
    for note in res.notes:
        print(f"note: {note}")
    print(f"({CONVENTION})")


# ---- sample ------------------------------------------------------------------------------------------


def _register_sample(tiny_sub) -> None:
    from pyns.data.names import DATASETS
    from pyns.tinynet.sample import DEFAULT_BAND, DEFAULT_RANGE, EXECUTORS

    p = tiny_sub.add_parser(
        "sample", help="sample (r, d, w), train every model (for `pyns tiny fit`)",
        description="Draw (r, d, w) uniformly in --range, keep the first --n draws whose MACs lie in the "
                    "--budget band (x the default network's MACs, exact counts), and train each with a short "
                    "recipe (SGD momentum 0.5, weight decay 5e-4, lr divided by 10 at 1/2 and 3/4 of --epochs). "
                    "One folder per model under DIR/cells/; rerunning the same command resumes, skipping "
                    "finished models. Depth and width follow TinyNet's policy unless --policy is given.")
    add_arch_options(p)
    p.add_argument("--n", type=int, default=100, metavar="N", help="models to train (default 100)")
    p.add_argument("--range", default=f"{DEFAULT_RANGE[0]}:{DEFAULT_RANGE[1]}", metavar="LO:HI",
                   help="sampling range of each of r, d, w (default %(default)s, the paper's)")
    p.add_argument("--budget", default=f"{DEFAULT_BAND[0]}:{DEFAULT_BAND[1]}", metavar="LO:HI",
                   help="keep models with MACs in [LO, HI] x the default network's (default %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="run folder (created; resumed if it exists)")
    p.add_argument("--data", required=True, choices=DATASETS, metavar="NAME",
                   help=f"data set: {', '.join(DATASETS)}")
    p.add_argument("--root", metavar="PATH", help="folder holding the data set (not needed for digits/synthetic)")
    p.add_argument("--epochs", type=int, default=10, metavar="E", help="epochs per model (default 10)")
    p.add_argument("--lr", type=float, default=0.1, help="initial learning rate (default 0.1)")
    p.add_argument("--batch-size", type=int, default=128, metavar="B", help="batch size (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws and of training (default 0)")
    p.add_argument("--device", metavar="DEV", help="torch device, e.g. cuda:0 or cpu (default: a GPU if any)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: one model after another here (default); ray: Ray tasks (pip install ray)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster address (default: start a local Ray instance)")
    p.add_argument("--gpus-per-model", type=float, metavar="G",
                   help="GPUs each Ray task reserves (default: 1 if this machine has CUDA, else 0)")
    p.set_defaults(handler=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    from pyns.tinynet.sample import sample_tiny

    check_out_folder(args.out)
    arch = arch_from_args(args)
    results = sample_tiny(arch, args.out, data=args.data, root=args.root, n=args.n,
                          value_range=_pair(args.range, "--range"), band=_pair(args.budget, "--budget"),
                          seed=args.seed, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                          policy=args.policy or "tinynet", executor=args.executor, ray_address=args.ray_address,
                          gpus_per_cell=args.gpus_per_model, device=args.device)
    print(f"{len(results)} models trained in {args.out}; next: pyns tiny fit {args.out}")
    return 0


# ---- fit ---------------------------------------------------------------------------------------------


def _register_fit(tiny_sub) -> None:
    from pyns.tinynet.fit import ACCURACIES, DEFAULT_FRACTION

    p = tiny_sub.add_parser(
        "fit", help="fit a tiny formula on a sampling run's Pareto front",
        description="Take the top --fraction of the trained models of a `pyns tiny sample` folder by "
                    "non-dominated sorting on (test accuracy up, MACs down), report the Spearman correlation "
                    "of r, d and w with MACs on them, fit the Gaussian processes c -> r and c -> d (RBF + "
                    "white noise, marginal likelihood) and write the formula for `pyns tiny --formula`. "
                    "Also draws the paper's Figures 1 and 3 into DIR (unless --no-plots).")
    p.add_argument("run_dir", metavar="DIR", help="the --out folder of `pyns tiny sample`")
    p.add_argument("--out", metavar="FORMULA", help="formula file to write (default: DIR/formula.json)")
    p.add_argument("--fraction", type=float, default=DEFAULT_FRACTION,
                   help="share of the models to fit on (default %(default)s, the paper's top 20%%)")
    p.add_argument("--accuracy", choices=ACCURACIES, default="final",
                   help="final (after the last epoch; default) or best (maximum over epochs) test accuracy")
    p.add_argument("--no-plots", action="store_true", help="do not draw the figures")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    from pyns.tinynet.fit import fit_sample_dir

    if not 0 < args.fraction <= 1:
        raise PynsError(f"--fraction must be in (0, 1], got {args.fraction}")
    run_dir = Path(args.run_dir)
    if os.path.isdir(run_dir):  # fit.json, the figures and (by default) formula.json go into it
        check_out_folder(run_dir)
    check_out_file(args.out if args.out is not None else run_dir / "formula.json" if os.path.isdir(run_dir) else None)
    report = fit_sample_dir(args.run_dir, args.out, fraction=args.fraction, accuracy=args.accuracy)
    if not args.no_plots:
        from pyns.tinynet.plots import plot_tiny_dir

        report.figures = plot_tiny_dir(args.run_dir, fraction=args.fraction, accuracy=args.accuracy)
    if args.json:
        print_json(report.to_dict())
        return 0
    f = report.formula
    print(f"{report.models} trained models; top {len(report.selected)} by non-dominated sorting "
          f"({args.accuracy} test accuracy vs MACs): {', '.join(report.selected)}")
    print(f"first Pareto front: {', '.join(report.front)}")
    print("Spearman correlation with MACs on the selected models: " + ", ".join(
        f"{k} {v['rho']:+.3f} (p {v['pvalue']:.3g})" if math.isfinite(v["rho"]) else f"{k} undefined"
        for k, v in report.spearman.items()))
    for name, params in (("r", f.r_kernel), ("d", f.d_kernel)):
        print(f"GP c -> {name}: constant {params.constant:.4g}, length scale {params.length_scale:.4g} (in ln c), "
              f"noise {params.noise:.3g}")
    print(f"formula written to {report.formula_path}; use it with `pyns tiny ARCH --macs ... --formula "
          f"{report.formula_path}`")
    for path in report.figures:
        print(f"figure: {path}")
    return 0
