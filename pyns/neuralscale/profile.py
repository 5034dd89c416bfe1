"""NeuralScale Algorithm 2: fit φ_l(τ) = α_l τ^β_l per searchable width from a pruning trajectory.

Ordinary least squares of ln φ_l on (1, ln τ) over the rows recorded by Algorithm 1 (`trajectory.jsonl`).
`pyns.neuralscale.prune.runfolder.fit_run` applies it to a run folder (what `pyns fit` and `pyns prune` call).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from pyns.errors import ProfileError
from pyns.runfiles import read_jsonl
from pyns.scaling.profile import Profile, ScalingWarning, SymbolFit, arch_fingerprint

# The paper's rule: fewer recorded prune steps than this and the fit is not trusted; fall back to uniform.
MIN_POINTS = 6
# |β| below this is least-squares noise on a width that never changed: store it as exactly 0.
BETA_ZERO = 1e-12


# ---- trajectories ------------------------------------------------------------------------------
TRAJECTORY_FILE = "trajectory.jsonl"


def read_trajectory(source: str | Path) -> list[dict]:
    """Rows of a pruning trajectory: a run folder (its `trajectory.jsonl`) or the file itself.

    A torn last line (the pruner died mid-append) is dropped; a damaged line anywhere else is an error.
    """
    path = Path(source)
    if path.is_dir():
        path = path / TRAJECTORY_FILE
    if not path.is_file():
        raise ProfileError(f"pruning trajectory not found: {source} (expected {path})")
    try:
        rows = read_jsonl(path)
    except (OSError, UnicodeDecodeError) as err:
        raise ProfileError(f"cannot read trajectory {path}: {err}") from None
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ProfileError(f"{path}: row {number} is not a JSON object")
    return rows


def _points(trajectory, metric: str) -> tuple[np.ndarray, dict[str, np.ndarray], str | None]:
    """-> (τ[n], {symbol: φ[n]}, file name or None) from a path, rows, or {"tau": [...], "widths": {...}}."""
    source = None
    if isinstance(trajectory, (str, Path)):
        source = str(trajectory)
        trajectory = read_trajectory(trajectory)
    if isinstance(trajectory, Mapping):
        if "tau" not in trajectory or "widths" not in trajectory:
            raise ProfileError("a trajectory given as a mapping needs \"tau\" and \"widths\" entries")
        tau = np.asarray(trajectory["tau"], dtype=np.float64).ravel()
        widths = {str(k): np.asarray(v, dtype=np.float64).ravel() for k, v in trajectory["widths"].items()}
        for name, values in widths.items():
            if values.shape != tau.shape:
                raise ProfileError(f"trajectory symbol `{name}` has {values.size} values for {tau.size} τ values")
        return tau, widths, source
    rows = [r for r in _rows(trajectory) if r.get("recording", True)]
    names: list[str] = []
    for row in rows:
        for name in row.get("widths", {}):
            if name not in names:
                names.append(name)
    tau = np.empty(len(rows))
    widths = {name: np.empty(len(rows)) for name in names}
    where = source or "trajectory"
    for i, row in enumerate(rows):
        if metric not in row:
            raise ProfileError(f"{where}: row {i + 1} (step {row.get('step', '?')}) has no \"{metric}\" value")
        if not isinstance(row.get("widths"), Mapping):
            raise ProfileError(f"{where}: row {i + 1} has no \"widths\" object")
        tau[i] = float(row[metric])
        for name in names:
            if name not in row["widths"]:
                raise ProfileError(f"{where}: row {i + 1} has no width for `{name}`")
            widths[name][i] = float(row["widths"][name])
    return tau, widths, source


def _rows(trajectory: Iterable) -> list[dict]:
    rows = list(trajectory)
    for row in rows:
        if not isinstance(row, Mapping):
            raise ProfileError("a trajectory must be a path, a list of row objects, or "
                               "{\"tau\": [...], \"widths\": {symbol: [...]}}")
    return rows


def fit_power_law(trajectory, *, arch=None, metric: str = "params", dataset: str | None = None,
                  min_points: int = MIN_POINTS) -> Profile:
    """Fit φ_l = α_l τ^β_l per symbol by least squares in log space (SPEC §5, Algorithm 2).

    `trajectory`: a `trajectory.jsonl` path, a list of its rows, or {"tau": [...], "widths": {sym: [...]}}.
    Only rows with `"recording": true` are used (all rows when the key is absent). With fewer than
    `min_points` usable points (or a single τ value) the profile falls back to uniform scaling, with a
    ScalingWarning, as the paper does. With `arch`, the symbols must be its searchable ones.
    """
    if metric not in ("params", "macs"):
        raise ProfileError(f"metric must be \"params\" or \"macs\", got {metric!r}")
    tau, widths, source = _points(trajectory, metric)
    if arch is not None:
        unknown = [n for n in widths if n not in arch.searchable]
        if unknown:
            raise ProfileError(f"the trajectory has widths for {', '.join(unknown)}, which {arch.name} does not "
                               "search")
        missing = [n for n in arch.searchable if n not in widths]
        if missing and tau.size:
            raise ProfileError(f"the trajectory has no widths for {', '.join(missing)} of {arch.name}")
    if tau.size and not np.all(np.isfinite(tau) & (tau > 0)):
        raise ProfileError(f"every τ ({metric}) in the trajectory must be a positive number")
    for name, values in widths.items():
        if not np.all(np.isfinite(values) & (values > 0)):
            raise ProfileError(f"symbol `{name}` has a width <= 0 in the trajectory; widths must be >= 1 "
                               "to take their logarithm")
    common = dict(metric=metric, points=int(tau.size), dataset=dataset, trajectory=source,
                  arch=arch.name if arch is not None else None,
                  arch_hash=arch_fingerprint(arch) if arch is not None else None)
    distinct = np.unique(tau).size
    if tau.size < min_points or distinct < 2 or not widths:
        note = (f"only {tau.size} recorded trajectory points ({distinct} distinct τ); at least {min_points} are "
                "needed to fit power laws, so this profile falls back to uniform scaling")
        warnings.warn(note, ScalingWarning, stacklevel=2)
        span = (float(tau.min()), float(tau.max())) if tau.size else (0.0, 0.0)
        return Profile(fits={}, tau_range=span, fallback="uniform", notes=[note], **common)
    design = np.stack([np.ones_like(tau), np.log(tau)], axis=1)   # [n, 2]: (1, ln τ)
    targets = np.stack([np.log(widths[n]) for n in widths], axis=1)  # [n, L]: ln φ_l
    theta, *_ = np.linalg.lstsq(design, targets, rcond=None)         # [2, L]: (ln α_l, β_l)
    predicted = design @ theta
    fits = {}
    for j, name in enumerate(widths):
        residual = float(np.sum((targets[:, j] - predicted[:, j]) ** 2))
        total = float(np.sum((targets[:, j] - targets[:, j].mean()) ** 2))
        # A width that never changed is fitted exactly by β = 0: call that a perfect fit.
        r2 = 1.0 - residual / total if total > 0 else (1.0 if residual < 1e-18 else 0.0)
        beta = float(theta[1, j])
        beta = 0.0 if abs(beta) < BETA_ZERO else beta  # a constant width fits to β ~ 1e-17, not exactly 0
        fits[name] = SymbolFit(alpha=float(np.exp(theta[0, j])), beta=beta, r2=r2, points=int(tau.size))
    profile = Profile(fits=fits, tau_range=(float(tau.min()), float(tau.max())), **common)
    negative = [n for n, f in fits.items() if f.beta < 0]
    if negative:
        note = (f"negative β for {', '.join(negative)}: those widths shrink as the budget grows; solves check "
                "monotonicity and scan exhaustively when it fails")
        profile.notes.append(note)
        warnings.warn(note, ScalingWarning, stacklevel=2)
    return profile


__all__ = ["fit_power_law", "read_trajectory", "MIN_POINTS"]
