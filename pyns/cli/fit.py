"""`pyns fit RUN_DIR`: fit (or refit) the power-law scaling profile of a pruning run (NeuralScale Algorithm 2).

Reads the recorded rows of RUN_DIR/trajectory.jsonl, fits them with pyns.neuralscale.profile.fit_power_law
against the run's own architecture (the arch.arch copy in the folder, with the run's settings) and writes
RUN_DIR/profile.json, through `pyns.neuralscale.prune.runfolder.fit_run` (which `pyns prune` calls too).
"""
from __future__ import annotations

import argparse
import sys

PROFILE_FILE = "profile.json"  # the name pyns.neuralscale.prune.runfolder.PROFILE_FILE holds (kept torch-free)


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
    import os
    from pathlib import Path

    from pyns.cli.common import check_out_file
    from pyns.neuralscale.prune.runfolder import fit_run  # torch: only when the command runs

    run_dir = Path(args.run_dir)
    check_out_file(args.out if args.out is not None else run_dir / PROFILE_FILE if os.path.isdir(run_dir) else None)
    path, notes = fit_run(args.run_dir, args.out, metric=args.metric)
    for note in notes:
        print(f"pyns: warning: {note}", file=sys.stderr)
    print(f"profile: {path}")
    return 0
