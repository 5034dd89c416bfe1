"""`pyns scale`: the widths that best use a params / MACs budget (uniform, NeuralScale profile, from-config)."""
from __future__ import annotations

import argparse
import sys
import warnings

from pyns.cli.common import (add_arch_options, arch_from_args, check_out_file, human, parse_assignments,
                              print_json)
from pyns.errors import BudgetError
from pyns.policies import scale_resolution
from pyns.scaling.budget import parse_budget
from pyns.scaling.profile import ScalingWarning
from pyns.scaling.solve import METHODS, WIDTH_CAP, solve_budget

CONVENTION = ("params = trainable parameters; MACs = multiply-accumulates of conv/linear layers at batch 1 "
              "(FLOPs = 2 x MACs)")
UNIFORM_NOTE = "no --profile given: using the uniform method (one width multiplier on every searchable width)"


def register(sub) -> None:
    p = sub.add_parser(
        "scale", help="widths for a params / MACs budget",
        description="Find the widths that best use a budget: the largest network on the method's family whose "
                    "cost does not exceed it (--nearest: the closest from either side), then fill what its "
                    "steps leave by adding single channels (--no-fill: skip that). Budgets: 580000, "
                    "580k, 0.58M, 1.2G, or 0.25x (a fraction of the default network's cost). "
                    "Methods: uniform (one multiplier on every searchable width; the default without a "
                    "profile), profile (NeuralScale power laws from `pyns fit`), from-config (scale a given "
                    f"configuration uniformly). Widths may grow up to {WIDTH_CAP}x their defaults. "
                    + CONVENTION + ".")
    add_arch_options(p)
    budget = p.add_argument_group("budget (at least one; --params and --macs together: both must hold)")
    budget.add_argument("--params", metavar="N", help="parameter budget, e.g. 0.58M or 0.25x")
    budget.add_argument("--macs", metavar="N", help="multiply-accumulate budget, e.g. 300M")
    budget.add_argument("--flops", metavar="N", help="FLOPs budget (= 2 x MACs), e.g. 600M")
    budget.add_argument("--width-ratio", type=float, metavar="R",
                        help="the paper's convention: the budget is the params of the default network with "
                             "every searchable width scaled uniformly by R")
    p.add_argument("--profile", metavar="FILE", help="a scaling profile (JSON from `pyns fit`)")
    p.add_argument("--method", choices=METHODS,
                   help="uniform, profile or from-config (default: profile with --profile, from-config with "
                        "--config, else uniform)")
    p.add_argument("--config", action="append", default=[], metavar="K=V,...",
                   help="the configuration the from-config method scales, e.g. c1=32,c2=60 (others: defaults)")
    p.add_argument("--nearest", action="store_true",
                   help="allow the closest network from either side of the budget (default: never over it)")
    p.add_argument("--no-fill", action="store_true",
                   help="keep the family solution: do not add single channels to use what the family's "
                        "steps leave of the budget (with --width-ratio and the uniform method there is "
                        "nothing to fill: the answer is the uniform xR network itself)")
    p.add_argument("--d", type=float, default=1.0, metavar="D", help="depth multiplier on every repeat count")
    p.add_argument("--r", type=float, metavar="R", help="resolution multiplier: int(resolution * R)")
    p.add_argument("--resolution", type=int, metavar="N", help="input resolution in pixels (overrides --r)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--out", metavar="FILE", help="write a resolved .arch file with the concrete widths")
    p.set_defaults(handler=run)


def _budgets(args: argparse.Namespace, arch, depth: float, resolution: int | None) -> tuple[object, object, str]:
    """-> (params budget, MACs budget, how the budget was given)."""
    if args.macs is not None and args.flops is not None:
        raise BudgetError("give --macs or --flops, not both")
    if args.width_ratio is not None:
        if any(v is not None for v in (args.params, args.macs, args.flops)):
            raise BudgetError("--width-ratio sets the budget by itself; drop --params/--macs/--flops")
        if not 0 < args.width_ratio <= WIDTH_CAP:
            raise BudgetError(f"--width-ratio must be in (0, {WIDTH_CAP}], got {args.width_ratio}")
        cost = arch.count(arch.uniform_widths(args.width_ratio), depth=depth, resolution=resolution)
        return cost.params, None, f"params of the uniform x{args.width_ratio:g} network ({cost.params:,})"
    if all(v is None for v in (args.params, args.macs, args.flops)):
        raise BudgetError("give a budget: --params N, --macs N, --flops N or --width-ratio R")
    macs = args.macs
    if args.flops is not None:
        flops = parse_budget(args.flops, "FLOPs budget")
        macs = flops if flops.relative else flops.value / 2
    return args.params, macs, ""


def _macs_text(macs) -> str:
    value = getattr(macs, "value", macs)
    return f"{value:g}x the default network" if getattr(macs, "relative", False) else f"{value:,g}"


def run(args: argparse.Namespace) -> int:
    check_out_file(args.out)
    arch = arch_from_args(args)
    for name, value in (("--d", args.d), ("--r", args.r)):
        if value is not None and not 0 < value <= 100:
            raise BudgetError(f"{name} must be in (0, 100], got {value}")
    resolution = args.resolution
    if resolution is None and args.r is not None:
        resolution = scale_resolution(arch.ir().params.get("resolution", arch.resolution), args.r)
    params, macs, given_as = _budgets(args, arch, args.d, resolution)
    config = parse_assignments(args.config, "--config") or None
    # --width-ratio R with the uniform method asks for the uniform xR network (the paper's baseline): a
    # pure multiplier, never filled. With a profile it is a budget like any other.
    uniform = args.method == "uniform" or (args.method is None and args.profile is None and not config)
    fill = not args.no_fill and not (args.width_ratio is not None and uniform)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ScalingWarning)
        try:
            result = solve_budget(arch, params, macs, method=args.method, profile=args.profile, config=config,
                                  nearest=args.nearest, depth=args.d, resolution=resolution, fill=fill)
        except BudgetError as err:
            if args.flops is None:
                raise
            # The solver works in MACs; say how the user's --flops became the MACs it reports.
            raise BudgetError(f"--flops {args.flops} is a budget of MACs <= {_macs_text(macs)} "
                              f"(FLOPs = 2 x MACs): {err}") from None
    notes = list(result.warnings)
    notes += [str(w.message) for w in caught if str(w.message) not in notes]
    if result.method == "uniform" and args.profile is None and args.method is None:
        notes.insert(0, UNIFORM_NOTE)
    if args.out:
        from pyns.scaling.resolved import write_resolved
        write_resolved(args.out, arch, result, budget_text=given_as or None)
    if args.json:
        out = result.to_dict()
        out.update({"policy": arch.policy.name, "defaults": {k: arch.defaults[k] for k in result.widths},
                    "searchable": arch.searchable, "convention": CONVENTION, "notes": notes,
                    "out": args.out})
        if given_as:
            out["budget_from"] = given_as
        print_json(out)
        return 0
    for note in notes:
        print(note if note == UNIFORM_NOTE else f"warning: {note}",
              file=sys.stdout if note == UNIFORM_NOTE else sys.stderr)
    _print(arch, result, given_as)
    if args.out:
        print(f"wrote {args.out} (count it with `pyns count {args.out}`"
              + (f" --d {args.d:g}" if args.d != 1.0 else "") + ")")
    return 0


def _print(arch, result, given_as: str) -> None:
    depth = f"  depth x{result.depth:g}" if result.depth != 1.0 else ""
    print(f"{arch.name}  resolution {result.resolution}x{result.resolution}  policy {arch.policy.name}  "
          f"method {result.method}{depth}")
    budget = " and ".join(f"{k} <= {int(v):,} ({human(v)})" for k, v in result.budget.items() if v is not None)
    print(f"budget: {budget}" + (f"  [{given_as}]" if given_as else ""))
    defaults = arch.defaults
    family = result.family
    names = [s for s in result.widths if s in arch.searchable]
    name_w = max([len(s) for s in names] + [6])
    filled = result.filled
    print(f"{'symbol':<{name_w}}  {'default':>7}     {'new':>6}" + ("  (family)" if filled else ""))
    for s in names:
        print(f"{s:<{name_w}}  {defaults[s]:>7}  -> {result.widths[s]:>6}"
              + (f"  ({family.widths[s]})" if filled else ""))
    print(f"params: {result.params:,} ({human(result.params)})")
    print(f"MACs:   {result.macs:,} ({human(result.macs)})   FLOPs: {result.flops:,} ({human(result.flops)})")
    side = "under budget" if result.gap_percent <= 0 else "over budget"
    print(f"gap:    {result.gap_percent:+.3f}% in {result.metric} ({side})")
    how = "bisection on a proven-monotone cost" if result.certified else "exhaustive scan of the family"
    print(f"family: params {family.params:,}, MACs {family.macs:,}, gap {family.gap_percent:+.3f}% in "
          f"{family.metric}; {result.scalar_name} = {result.scalar:.6g} (the largest network of the "
          f"{result.method} family within budget: {how}, {result.evaluations} evaluations)"
          if not result.nearest else
          f"family: params {family.params:,}, MACs {family.macs:,}, gap {family.gap_percent:+.3f}% in "
          f"{family.metric}; {result.scalar_name} = {result.scalar:.6g} (the {result.method} family's "
          f"closest network: {how}, {result.evaluations} evaluations)")
    if filled:
        added = sum(result.widths[s] - family.widths[s] for s in result.widths)
        traded = (f", {result.exchanged} traded between layers (a small network: adding alone left "
                  f"more of the budget unused)" if result.exchanged else "")
        print(f"fill:   {added:+} channels in {result.fill_moves} moves{traded}"
              + (" (no single channel fits in what is left)" if not result.fill_moves and not traded else "")
              + "; --no-fill keeps the family solution")
    print(f"({CONVENTION})")
