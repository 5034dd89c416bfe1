"""`pyns fit RUN_DIR`: fit (or refit) the power-law scaling profile of a pruning run (NeuralScale Algorithm 2).

Reads the recorded rows of RUN_DIR/trajectory.jsonl, fits them with pyns.neuralscale.profile.fit_power_law
against the run's own architecture (the arch.arch copy in the folder, with the run's settings) and writes
RUN_DIR/profile.json, through `pyns.neuralscale.prune.runfolder.fit_run` (which `pyns prune` calls too).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from pyns.cli.common import print_json
from pyns.errors import RunError

PROFILE_FILE = "profile.json"  # the name pyns.neuralscale.prune.runfolder.PROFILE_FILE holds (kept torch-free)
DESCENT_KIND = "pyns-descent"  # pyns.neuralscale.descent.RUN_KIND (kept torch-free)


def register(sub) -> None:
    p = sub.add_parser("fit", help="fit the scaling profile of a pruning run",
                       description="Fit phi_l(tau) = alpha_l * tau^beta_l per searchable width to the recorded "
                                   "rows of a pruning run (least squares of ln phi on ln tau) and write "
                                   "profile.json into the run folder. Prints alpha, beta, R^2 and the number "
                                   "of points of every width.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `pyns prune` (or one iteration "
                                                      "folder iter-NN/ of `pyns descent`)")
    p.add_argument("--metric", choices=("params", "macs"), default="params",
                   help="what tau counts (default: params, as in the paper)")
    p.add_argument("--out", metavar="FILE", help=f"where to write the profile (default RUN_DIR/{PROFILE_FILE})")
    p.add_argument("--json", action="store_true", help="print one JSON object (the fit of every width)")
    p.set_defaults(handler=run)


def _refuse_descent_folder(run_dir: Path) -> None:
    """A descent folder holds one pruning run per iteration: point at those instead of 'no config.json'."""
    try:
        kind = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("kind")
    except (OSError, ValueError, AttributeError):
        return
    if kind != DESCENT_KIND:
        return
    iterations = sorted(p.name for p in run_dir.glob("iter-*") if p.is_dir())
    listing = ", ".join(f"{run_dir / name}" for name in iterations) or "none yet"
    raise RunError(f"{run_dir} is an architecture-descent run, which holds one pruning run per iteration "
                   f"({listing}); fit one of those, e.g. `pyns fit {run_dir / (iterations[-1] if iterations else 'iter-00')}`"
                   f" (the descent's latest profile is {run_dir / PROFILE_FILE})")


def fit_summary(profile, path: Path, notes: list[str]) -> dict:
    """What `pyns fit --json` prints: per width alpha, beta, R^2 and points, plus the profile's state."""
    return {"profile": str(path), "metric": profile.metric, "arch": profile.arch, "points": profile.points,
            "tau_range": list(profile.tau_range), "fallback": profile.fallback,
            "symbols": {name: {"alpha": f.alpha, "beta": f.beta, "r2": f.r2, "points": f.points}
                        for name, f in profile.fits.items()},
            "warnings": notes}


def run(args: argparse.Namespace) -> int:
    from pyns.cli.common import check_out_file
    from pyns.neuralscale.prune.runfolder import fit_run  # torch: only when the command runs
    from pyns.scaling.profile import Profile

    run_dir = Path(args.run_dir)
    _refuse_descent_folder(run_dir)
    check_out_file(args.out if args.out is not None else run_dir / PROFILE_FILE if run_dir.is_dir() else None)
    path, notes = fit_run(run_dir, args.out, metric=args.metric)
    profile = Profile.load(path)
    if args.json:
        print_json(fit_summary(profile, path, notes))
        return 0
    for note in notes:
        print(f"pyns: warning: {note}", file=sys.stderr)
    if profile.fits:
        name_w = max([len(n) for n in profile.fits] + [6])
        print(f"{'symbol':<{name_w}}  {'alpha':>10}  {'beta':>8}  {'R^2':>6}  {'points':>6}")
        for name, f in profile.fits.items():
            r2 = f"{f.r2:.3f}" if math.isfinite(f.r2) else "-"  # undefined when the width never moved
            print(f"{name:<{name_w}}  {f.alpha:>10.4g}  {f.beta:>8.4f}  {r2:>6}  {f.points:>6}")
    if profile.fallback:
        print(f"no power laws: the profile falls back to {profile.fallback} scaling")
    print(f"profile: {path}")
    return 0
