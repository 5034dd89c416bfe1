"""Scaling profiles: per-symbol power laws φ_l(τ) = α_l τ^β_l, as the budget solver consumes them.

This module holds the profile as data (versioned JSON, validated on load, with its provenance: architecture
and a hash of its source and settings, data set, trajectory file, R² of each fit). Fitting one from a
pruning trajectory is NeuralScale's Algorithm 2 and lives in `pyns.neuralscale.profile`; the solver here
only needs the fitted α, β.
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
from pyns.runfiles import atomic_write_text, json_text

FORMAT = "pyns.profile"
VERSION = 1
# A solve whose τ lies more than this factor outside the fitted τ range is an extrapolation worth a warning.
EXTRAPOLATION_FACTOR = 2.0


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
        return json_text(self.to_dict())  # strict: an undefined R² (a width that never moved) is null

    def save(self, path: str | Path) -> None:
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
                r2 = float(math.nan if entry.get("r2") is None else entry["r2"])  # null: undefined R²
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


__all__ = ["Profile", "SymbolFit", "ScalingWarning", "arch_fingerprint", "EXTRAPOLATION_FACTOR"]
