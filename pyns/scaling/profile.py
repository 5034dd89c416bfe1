"""Scaling profiles: NeuralScale's per-symbol power laws φ_l(τ) = α_l τ^β_l (SPEC §5, Algorithm 2).

A profile is fitted from a pruning trajectory (`trajectory.jsonl`, one row per prune step, written by the
pruner) by ordinary least squares of ln φ_l on (1, ln τ). It records where it came from (architecture and a
hash of its source and settings, data set, trajectory file) and how good each fit is (R² in log space),
and is stored as versioned JSON that is validated on load.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from pyns.errors import ProfileError

FORMAT = "pyns.profile"
VERSION = 1
# SPEC §5: fewer recorded prune steps than this and the fit is not trusted; fall back to uniform scaling.
MIN_POINTS = 6
# A solve whose τ lies more than this factor outside the fitted τ range is an extrapolation worth a warning.
EXTRAPOLATION_FACTOR = 2.0
# |β| below this is least-squares noise on a width that never changed: store it as exactly 0.
BETA_ZERO = 1e-12


class ScalingWarning(UserWarning):
    """Something a person should know about a profile or a solve, that does not stop it."""


@dataclass(frozen=True)
class SymbolFit:
    alpha: float
    beta: float
    r2: float
    points: int

    def raw(self, tau: float) -> float:
        return self.alpha * tau ** self.beta


@dataclass
class Profile:
    metric: str                          # what τ counts: "params" or "macs"
    fits: dict[str, SymbolFit]           # searchable symbol -> power law (empty when fallback is set)
    tau_range: tuple[float, float]       # the τ values the fit saw
    points: int                          # recorded trajectory rows used
    arch: str | None = None
    arch_hash: str | None = None
    dataset: str | None = None
    trajectory: str | None = None
    fallback: str | None = None          # "uniform" when there were too few points to fit
    notes: list[str] = field(default_factory=list)

    @property
    def symbols(self) -> list[str]:
        return list(self.fits)

    def raw_widths(self, tau: float) -> dict[str, float]:
        return {name: fit.raw(tau) for name, fit in self.fits.items()}

    def extrapolation(self, tau: float) -> str | None:
        """A warning text when τ is far outside the fitted range, else None."""
        lo, hi = self.tau_range
        if lo > 0 and (tau < lo / EXTRAPOLATION_FACTOR or tau > hi * EXTRAPOLATION_FACTOR):
            return (f"the solve extrapolates the profile: τ = {tau:.4g} {self.metric} is far outside the "
                    f"fitted range [{lo:.4g}, {hi:.4g}]; widths there are a guess")
        return None

    # ---- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": VERSION, "metric": self.metric,
            "arch": self.arch, "arch_hash": self.arch_hash, "dataset": self.dataset,
            "trajectory": self.trajectory, "points": self.points, "tau_range": list(self.tau_range),
            "fallback": self.fallback, "notes": list(self.notes),
            "symbols": {name: {"alpha": f.alpha, "beta": f.beta, "r2": f.r2, "points": f.points}
                        for name, f in self.fits.items()},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | Path) -> None:
        from pyns.cli.common import atomic_write_text

        atomic_write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, data: Any, source: str = "profile") -> "Profile":
        if not isinstance(data, dict):
            raise ProfileError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise ProfileError(f"{source}: not a pyns profile (expected \"format\": \"{FORMAT}\")")
        version = data.get("version")
        if version != VERSION:
            raise ProfileError(f"{source}: profile version {version!r} is not supported (this pyns reads "
                               f"version {VERSION})")
        metric = data.get("metric")
        if metric not in ("params", "macs"):
            raise ProfileError(f"{source}: \"metric\" must be \"params\" or \"macs\", got {metric!r}")
        fallback = data.get("fallback")
        if fallback not in (None, "uniform"):
            raise ProfileError(f"{source}: \"fallback\" must be null or \"uniform\", got {fallback!r}")
        symbols = data.get("symbols")
        if not isinstance(symbols, dict):
            raise ProfileError(f"{source}: \"symbols\" must be an object of symbol -> {{alpha, beta, r2}}")
        fits = {}
        for name, entry in symbols.items():
            if not isinstance(entry, dict):
                raise ProfileError(f"{source}: symbol `{name}` must be an object with alpha and beta")
            try:
                alpha, beta = float(entry["alpha"]), float(entry["beta"])
                r2 = float(entry.get("r2", math.nan))
                points = int(entry.get("points", data.get("points", 0)))
            except (KeyError, TypeError, ValueError):
                raise ProfileError(f"{source}: symbol `{name}` needs numeric alpha and beta") from None
            fits[name] = SymbolFit(alpha, beta, r2, points)
        tau_range = data.get("tau_range", [0.0, 0.0])
        try:
            tau_lo, tau_hi = (float(v) for v in tau_range)
        except (TypeError, ValueError):
            raise ProfileError(f"{source}: \"tau_range\" must be [low, high]") from None
        profile = cls(metric=metric, fits=fits, tau_range=(tau_lo, tau_hi), points=int(data.get("points", 0)),
                      arch=data.get("arch"), arch_hash=data.get("arch_hash"), dataset=data.get("dataset"),
                      trajectory=data.get("trajectory"), fallback=fallback, notes=list(data.get("notes", [])))
        profile.validate(source)
        return profile

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ProfileError(f"profile file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ProfileError(f"cannot read profile {path}: {err}") from None
        except json.JSONDecodeError as err:
            raise ProfileError(f"{path} is not valid JSON (line {err.lineno}: {err.msg})") from None
        return cls.from_dict(data, str(path))

    def validate(self, source: str = "profile") -> None:
        """Reject profiles no solve can use; raise ProfileError naming the problem."""
        if self.fallback is None and not self.fits:
            raise ProfileError(f"{source}: the profile has no fitted symbols")
        for name, fit in self.fits.items():
            if not (math.isfinite(fit.alpha) and fit.alpha > 0):
                raise ProfileError(f"{source}: symbol `{name}` has alpha {fit.alpha}; it must be a positive "
                                   "finite number")
            if not math.isfinite(fit.beta):
                raise ProfileError(f"{source}: symbol `{name}` has a non-finite beta")
        lo, hi = self.tau_range
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
            raise ProfileError(f"{source}: \"tau_range\" must be 0 <= low <= high, got [{lo}, {hi}]")
        if self.fits and all(fit.beta == 0 for fit in self.fits.values()):
            raise ProfileError(f"{source}: every beta is 0, so no width depends on τ and no budget can be met")

    def check_arch(self, arch) -> list[str]:
        """Raise if the profile's symbols are not the arch's searchable ones; return warnings otherwise."""
        if self.fallback:
            return []
        searchable = set(arch.searchable)
        missing = [s for s in arch.searchable if s not in self.fits]
        extra = [s for s in self.fits if s not in searchable]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"no fit for {', '.join(missing)}")
            if extra:
                parts.append(f"fits for symbols {arch.name} does not have: {', '.join(extra)}")
            raise ProfileError(f"the profile does not match {arch.name}: " + "; ".join(parts)
                               + (f" (the profile was fitted on {self.arch})" if self.arch else ""))
        out = []
        if self.arch_hash and self.arch_hash != arch_fingerprint(arch):
            out.append(f"the profile was fitted on {self.arch or 'another architecture'} with a different "
                       f"source or settings than {arch.name}; its symbols match, so it is used as is")
        return out


def arch_fingerprint(arch) -> str:
    """sha256 of the .arch source text and the settings that change its IR (variant, overrides, policy)."""
    settings = {"variant": arch.variant, "params": {k: arch.params[k] for k in sorted(arch.params)},
                "policy": arch.policy.name}
    digest = hashlib.sha256(arch.source.text.encode())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


# ---- trajectories ------------------------------------------------------------------------------
def read_trajectory(path: str | Path) -> list[dict]:
    """Rows of a `trajectory.jsonl` (one JSON object per line; blank lines ignored)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ProfileError(f"trajectory file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ProfileError(f"cannot read trajectory {path}: {err}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ProfileError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ProfileError(f"{path}:{number}: expected a JSON object per line")
        rows.append(row)
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


__all__ = ["Profile", "SymbolFit", "ScalingWarning", "fit_power_law", "read_trajectory", "arch_fingerprint",
           "MIN_POINTS"]
