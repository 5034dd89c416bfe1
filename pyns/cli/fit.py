"""`pyns fit RUN_DIR`: fit (or refit) the power-law scaling profile of a pruning run (SPEC §5 Algorithm 2).

Reads the recorded rows of RUN_DIR/trajectory.jsonl, fits them with pyns.scaling.profile.fit_power_law
against the run's own architecture (the arch.arch copy in the folder, with the run's settings) and writes
RUN_DIR/profile.json. `pyns prune` calls the same `fit_run` at its end.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from pyns.errors import RunError

PROFILE_FILE = "profile.json"


def register(sub) -> None:
    p = sub.add_parser("fit", help="fit the scaling profile of a pruning run",
                       description="Fit phi_l(tau) = alpha_l * tau^beta_l per searchable width to the recorded "
                                   "rows of a pruning run (least squares of ln phi on ln tau) and write "
                                   "profile.json into the run folder.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `pyns prune`")
    p.add_argument("--metric", choices=("params", "macs"), default="params",
                   help="what tau counts (default: params, as in the paper)")
    p.add_argument("--out", metavar="FILE", help=f"where to write the profile (default RUN_DIR/{PROFILE_FILE})")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    path, notes = fit_run(args.run_dir, args.out, metric=args.metric)
    for note in notes:
        print(f"pyns: warning: {note}", file=sys.stderr)
    print(f"profile: {path}")
    return 0


def fit_run(run_dir: str | Path, out: str | Path | None = None, *, metric: str = "params") -> tuple[Path, list[str]]:
    """Fit the profile of a pruning run folder; returns its path and the fitter's warnings (e.g. the
    fall-back to uniform scaling when fewer than 6 rows were recorded)."""
    from pyns.prune.runfolder import TRAJECTORY_FILE, load_run_arch, load_run_config, read_trajectory
    from pyns.scaling.profile import fit_power_law

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    rows = read_trajectory(run_dir)
    if not any(row.get("recording") for row in rows):
        raise RunError(f"{run_dir / TRAJECTORY_FILE} has no recorded rows yet (recording starts once every "
                       "searchable width has lost a unit); continue the pruning run with --resume")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        profile = fit_power_law(rows, arch=load_run_arch(run_dir), metric=metric,
                                dataset=config.get("data", {}).get("name"))
    profile.trajectory = str(run_dir / TRAJECTORY_FILE)
    path = Path(out) if out is not None else run_dir / PROFILE_FILE
    profile.save(path)
    return path, [str(w.message) for w in caught]
