"""`pyns fit RUN_DIR`: fit (or refit) the power-law scaling profile of a pruning run (SPEC §5 Algorithm 2).

Reads the recorded rows of RUN_DIR/trajectory.jsonl, calls pyns.scaling.profile.fit_power_law and writes
RUN_DIR/profile.json. `pyns prune` calls the same `fit_run` at its end.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
from pathlib import Path
from typing import Any

from pyns.errors import ProfileError, RunError

PROFILE_FILE = "profile.json"


def register(sub) -> None:
    p = sub.add_parser("fit", help="fit the scaling profile of a pruning run",
                       description="Fit phi_l(tau) = alpha_l * tau^beta_l per searchable width to the recorded "
                                   "rows of a pruning run (least squares of ln phi on ln tau) and write "
                                   "profile.json into the run folder.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by `pyns prune`")
    p.add_argument("--out", metavar="FILE", help=f"where to write the profile (default RUN_DIR/{PROFILE_FILE})")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    path = fit_run(args.run_dir, args.out)
    print(f"profile: {path}")
    return 0


def _call_fit(rows: list[dict[str, Any]], context: dict[str, Any]):
    try:
        from pyns.scaling.profile import fit_power_law
    except ImportError as err:
        raise RunError(f"cannot fit a profile: pyns.scaling.profile is not available ({err})") from None
    # Pass the run's provenance to whichever of these keywords the fitter takes.
    accepted = inspect.signature(fit_power_law).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    extra = {k: v for k, v in context.items() if takes_any or k in accepted}
    return fit_power_law(rows, **extra)


def _write_profile(profile: Any, path: Path) -> None:
    from pyns.runfiles import atomic_write_json

    if hasattr(profile, "save"):
        profile.save(path)
    elif hasattr(profile, "to_dict"):
        atomic_write_json(path, profile.to_dict())
    else:
        atomic_write_json(path, profile)


def fit_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Fit the profile of a pruning run folder from its recorded rows; returns the profile's path."""
    from pyns.prune.run import TRAJECTORY_FILE, load_run_config, read_trajectory

    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    rows = read_trajectory(run_dir)
    recorded = [row for row in rows if row.get("recording")]
    if not recorded:
        raise RunError(f"{run_dir / TRAJECTORY_FILE} has no recorded rows yet (recording starts once every "
                       "searchable width has lost a unit); let the pruning run go on with --resume")
    context = {"arch": config.get("arch"), "data": config.get("data", {}).get("name"),
               "trajectory_file": str(run_dir / TRAJECTORY_FILE), "symbols": config.get("searchable")}
    profile = _call_fit(recorded, context)
    path = Path(out) if out is not None else run_dir / PROFILE_FILE
    _write_profile(profile, path)
    return path


def profile_laws(path: str | Path) -> dict[str, tuple[float, float]]:
    """(alpha, beta) per symbol from a profile.json, whatever nesting the profile format uses: any
    mapping from a symbol name to an object with `alpha` and `beta` counts."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ProfileError(f"cannot read the profile {path}: {err}") from None
    laws: dict[str, tuple[float, float]] = {}

    def visit(node: Any, key: str | None) -> None:
        if isinstance(node, dict):
            if key is not None and "alpha" in node and "beta" in node:
                try:
                    alpha, beta = float(node["alpha"]), float(node["beta"])
                except (TypeError, ValueError):
                    return
                if math.isfinite(alpha) and math.isfinite(beta):
                    laws[str(node.get("symbol", key))] = (alpha, beta)
                return
            for k, v in node.items():
                visit(v, str(k))
        elif isinstance(node, list):
            for item in node:
                if isinstance(item, dict) and "symbol" in item:
                    visit(item, str(item["symbol"]))
                else:
                    visit(item, key)

    visit(data, None)
    return laws
