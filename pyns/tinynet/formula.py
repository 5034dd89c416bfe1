"""The statistical half of TinyNet's "tiny formula" (SPEC §6): budget c -> resolution r and depth d.

c is a model's MACs divided by the base model's (EfficientNet-B0's) MACs. Two Gaussian-process
regressions, c -> r and c -> d, are fitted on models from the accuracy–MACs Pareto front; the width then
follows from the budget (solved against the real cost by the cost engine; the paper's closed form
`closed_form_w` is shown beside it). Nothing here knows about networks or costs.

Design choices:
- The GPs take x = ln c, not c. Budgets span 0.03..1.05 (a factor of 35); the released TinyNets sit at
  roughly equal *ratios* (0.9, 0.5, 0.25, 0.13, 0.06), and a single RBF length scale in ln c treats
  "halve the budget" alike at every size, where in linear c the small models would be crammed into a
  few percent of the axis.
- Kernel C·RBF + White with `normalize_y`, hyperparameters by maximising the marginal likelihood (a few
  seeded restarts, so fitting is deterministic). The predictive standard deviation includes the White
  noise term, i.e. it is the spread expected for one more Pareto model at that budget.
- A formula is stored as JSON holding its training points and the fitted kernel hyperparameters; on load
  the GPs are refitted with those hyperparameters frozen (optimizer=None). No pickled scikit-learn
  objects, so files survive library upgrades, and `fit_formula` goes through the very same frozen-refit
  path, so a loaded formula predicts exactly what the fitted one did.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from scipy import stats
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

from pyns.errors import BudgetError, ProfileError
from pyns.safewrite import atomic_write_text
from pyns.tinynet.pareto import crowding_distance, non_dominated_sort, pareto_top  # re-exported for callers

__all__ = [
    "FORMAT_NAME", "FORMAT_VERSION", "RELEASED_TINYNETS", "RELEASED_SOURCE", "KernelParams", "TinyPrediction",
    "TinyFormula", "fit_formula", "load_default_formula", "formula_from_released_macs", "spearman_with_macs",
    "sample_multipliers", "macs_table", "non_dominated_sort", "pareto_top", "crowding_distance",
]

FORMAT_NAME = "pyns.tiny_formula"
FORMAT_VERSION = 1
INPUT_TRANSFORM = "ln(c)"  # recorded in the file so a future linear-c format cannot be misread

# (r, d, w) of timm's released TinyNets (SPEC §6).
RELEASED_TINYNETS: dict[str, tuple[float, float, float]] = {
    "tinynet_a": (0.86, 1.2, 1.0),
    "tinynet_b": (0.84, 1.1, 0.75),
    "tinynet_c": (0.825, 0.85, 0.54),
    "tinynet_d": (0.68, 0.695, 0.54),
    "tinynet_e": (0.475, 0.60, 0.51),
}
RELEASED_SOURCE = "fitted on the five released TinyNets (timm tinynet_a..e; c = MACs / MACs of efficientnet_b0)"

# Hyperparameter search box. x = ln c spans ~3.6 for budgets 0.03..1.05; y is standardised (normalize_y).
_LENGTH_SCALE_INIT = 1.0
_LENGTH_SCALE_BOUNDS = (0.1, 100.0)  # below 0.1 (a 10% budget step) the GP would chase noise between models
_CONSTANT_INIT = 1.0
_CONSTANT_BOUNDS = (1e-3, 1e3)       # signal variance in units of var(y)
_NOISE_INIT = 1e-2
_NOISE_BOUNDS = (1e-6, 1.0)          # 1e-6: interpolating exactly is allowed; 1.0: all spread may be noise
_JITTER = 1e-10                      # scikit-learn's default diagonal jitter, kept explicit for the frozen refit
_N_RESTARTS = 4                      # a handful of restarts: 1-D inputs, three hyperparameters
_RANDOM_STATE = 0                    # fixed so the same points always give the same formula
_MIN_POINTS = 2                      # a length scale needs at least two distinct budgets


@dataclass(frozen=True)
class KernelParams:
    """Fitted hyperparameters of ConstantKernel(constant) * RBF(length_scale) + WhiteKernel(noise)."""

    constant: float
    length_scale: float
    noise: float

    def kernel(self):
        return (ConstantKernel(self.constant, constant_value_bounds="fixed")
                * RBF(self.length_scale, length_scale_bounds="fixed")
                + WhiteKernel(self.noise, noise_level_bounds="fixed"))

    def to_dict(self) -> dict[str, float]:
        return {"constant": self.constant, "length_scale": self.length_scale, "noise": self.noise}


class TinyPrediction(NamedTuple):
    """Predicted resolution and depth multipliers with their predictive standard deviations."""

    r: np.ndarray
    r_std: np.ndarray
    d: np.ndarray
    d_std: np.ndarray


def _as_1d(name: str, values: Any, where: str = "tiny formula") -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ProfileError(f"{where}: '{name}' must be a list of numbers") from None
    if array.ndim != 1:
        raise ProfileError(f"{where}: '{name}' must be a flat list of numbers, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ProfileError(f"{where}: '{name}' contains a non-finite value (NaN or infinity)")
    return array


def _check_points(c: np.ndarray, r: np.ndarray, d: np.ndarray, where: str = "tiny formula") -> None:
    if not (c.shape == r.shape == d.shape):
        raise ProfileError(
            f"{where}: c, r and d must have the same length, got {c.shape[0]}, {r.shape[0]} and {d.shape[0]}")
    if np.unique(c).shape[0] < _MIN_POINTS:
        raise ProfileError(f"{where}: need models at {_MIN_POINTS} or more distinct budgets c to fit, "
                           f"got {np.unique(c).shape[0]}")
    if np.any(c <= 0):
        raise ProfileError(f"{where}: every budget ratio c must be positive (c = MACs / base MACs)")
    if np.any(r <= 0) or np.any(d <= 0):
        raise ProfileError(f"{where}: every resolution and depth multiplier must be positive")


def _frozen_gp(x: np.ndarray, y: np.ndarray, params: KernelParams) -> GaussianProcessRegressor:
    """GP with the given hyperparameters, conditioned on (x, y) without any optimisation."""
    gp = GaussianProcessRegressor(kernel=params.kernel(), alpha=_JITTER, optimizer=None, normalize_y=True)
    return gp.fit(x[:, None], y)  # [n] -> [n, 1]: one input feature


def _optimise_hyperparameters(x: np.ndarray, y: np.ndarray) -> KernelParams:
    kernel = (ConstantKernel(_CONSTANT_INIT, _CONSTANT_BOUNDS)
              * RBF(_LENGTH_SCALE_INIT, _LENGTH_SCALE_BOUNDS)
              + WhiteKernel(_NOISE_INIT, _NOISE_BOUNDS))
    gp = GaussianProcessRegressor(kernel=kernel, alpha=_JITTER, normalize_y=True,
                                  n_restarts_optimizer=_N_RESTARTS, random_state=_RANDOM_STATE)
    with warnings.catch_warnings():
        # A hyperparameter at its bound (typically the noise floor on a handful of smooth points) is an
        # expected outcome, not a failure; the values are stored and visible in the formula file.
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(x[:, None], y)  # [n] -> [n, 1]
    fitted = gp.kernel_.get_params()
    return KernelParams(constant=float(fitted["k1__k1__constant_value"]),
                        length_scale=float(fitted["k1__k2__length_scale"]),
                        noise=float(fitted["k2__noise_level"]))


@dataclass(eq=False)
class TinyFormula:
    """GP regressions c -> r and c -> d, with the data and hyperparameters that define them.

    Build one with `fit_formula`, `TinyFormula.from_json` / `load`, or `load_default_formula`.
    """

    c: np.ndarray
    r: np.ndarray
    d: np.ndarray
    r_kernel: KernelParams
    d_kernel: KernelParams
    source: str
    labels: tuple[str, ...] | None = None
    _r_gp: GaussianProcessRegressor = field(init=False, repr=False)
    _d_gp: GaussianProcessRegressor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.c, self.r, self.d = _as_1d("c", self.c), _as_1d("r", self.r), _as_1d("d", self.d)
        _check_points(self.c, self.r, self.d)
        for name, params in (("r", self.r_kernel), ("d", self.d_kernel)):
            values = (params.constant, params.length_scale, params.noise)
            if not all(math.isfinite(v) and v > 0 for v in values):
                raise ProfileError(f"tiny formula: the kernel hyperparameters of '{name}' must be positive "
                                   f"finite numbers, got {params.to_dict()}")
        if self.labels is not None:
            self.labels = tuple(str(label) for label in self.labels)
            if len(self.labels) != self.c.shape[0]:
                raise ProfileError(f"tiny formula: {len(self.labels)} labels for {self.c.shape[0]} points")
        x = np.log(self.c)
        self._r_gp = _frozen_gp(x, self.r, self.r_kernel)
        self._d_gp = _frozen_gp(x, self.d, self.d_kernel)

    @property
    def c_range(self) -> tuple[float, float]:
        """Smallest and largest training budget; outside it the GPs drift back to the mean of the data."""
        return float(self.c.min()), float(self.c.max())

    def predict(self, c: float | Sequence[float] | np.ndarray) -> TinyPrediction:
        """(r, r_std, d, d_std) at budget ratio(s) c, each shaped like c (0-d for a scalar)."""
        c_array = np.asarray(c, dtype=np.float64)
        if not np.all(np.isfinite(c_array)) or np.any(c_array <= 0):
            raise BudgetError(f"the budget ratio c must be a positive finite number (MACs / base MACs), got {c}")
        x = np.log(c_array).reshape(-1, 1)  # any shape -> [m, 1]
        r_mean, r_std = self._r_gp.predict(x, return_std=True)
        d_mean, d_std = self._d_gp.predict(x, return_std=True)
        shape = c_array.shape
        return TinyPrediction(r_mean.reshape(shape)[()], r_std.reshape(shape)[()],
                              d_mean.reshape(shape)[()], d_std.reshape(shape)[()])

    @staticmethod
    def closed_form_w(c: Any, r: Any, d: Any) -> Any:
        """The paper's width w = sqrt(c / (r² d)); it ignores the fixed stem and head, so the real width
        must be solved against the cost (the CLI shows both)."""
        c, r, d = (np.asarray(v, dtype=np.float64) for v in (c, r, d))
        if np.any(c <= 0) or np.any(r <= 0) or np.any(d <= 0):
            raise BudgetError("closed-form width needs positive c, r and d")
        return np.sqrt(c / (r * r * d))[()]

    # ---- serialisation ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        points: dict[str, Any] = {"c": self.c.tolist(), "r": self.r.tolist(), "d": self.d.tolist()}
        if self.labels is not None:
            points["labels"] = list(self.labels)
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "source": self.source,
            "input": INPUT_TRANSFORM,
            "kernel": "ConstantKernel * RBF + WhiteKernel (scikit-learn, normalize_y=True)",
            "points": points,
            "hyperparameters": {"r": self.r_kernel.to_dict(), "d": self.d_kernel.to_dict()},
        }

    def to_json(self) -> str:
        # json writes floats with repr(), which round-trips every float64 exactly.
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "tiny formula") -> TinyFormula:
        if not isinstance(data, dict):
            raise ProfileError(f"{where}: expected a JSON object at the top level")
        missing = [k for k in ("format", "version", "source", "input", "points", "hyperparameters") if k not in data]
        if missing:
            raise ProfileError(f"{where}: missing key(s) {', '.join(repr(k) for k in missing)}")
        if data["format"] != FORMAT_NAME:
            raise ProfileError(f"{where}: not a tiny-formula file (format is {data['format']!r}, "
                               f"expected {FORMAT_NAME!r})")
        if data["version"] != FORMAT_VERSION:
            raise ProfileError(f"{where}: format version {data['version']!r} is not supported "
                               f"(this pyns reads version {FORMAT_VERSION})")
        if data["input"] != INPUT_TRANSFORM:
            raise ProfileError(f"{where}: input transform {data['input']!r} is not supported "
                               f"(expected {INPUT_TRANSFORM!r})")
        if not isinstance(data["source"], str) or not data["source"]:
            raise ProfileError(f"{where}: 'source' must be a non-empty string saying what the formula was fitted on")
        points, hyper = data["points"], data["hyperparameters"]
        if not isinstance(points, dict) or not all(k in points for k in ("c", "r", "d")):
            raise ProfileError(f"{where}: 'points' must be an object with lists 'c', 'r' and 'd'")
        kernels: dict[str, KernelParams] = {}
        for target in ("r", "d"):
            entry = hyper.get(target) if isinstance(hyper, dict) else None
            if not isinstance(entry, dict):
                raise ProfileError(f"{where}: 'hyperparameters' must hold an object for '{target}'")
            absent = [k for k in ("constant", "length_scale", "noise") if k not in entry]
            if absent:
                raise ProfileError(f"{where}: hyperparameters of '{target}' miss {', '.join(absent)}")
            try:
                kernels[target] = KernelParams(*(float(entry[k]) for k in ("constant", "length_scale", "noise")))
            except (TypeError, ValueError):
                raise ProfileError(f"{where}: hyperparameters of '{target}' must be numbers") from None
        labels = points.get("labels")
        if labels is not None and not isinstance(labels, list):
            raise ProfileError(f"{where}: 'points.labels' must be a list of names")
        c, r, d = (_as_1d(f"points.{k}", points[k], where) for k in ("c", "r", "d"))
        _check_points(c, r, d, where)
        if labels is not None and len(labels) != c.shape[0]:
            raise ProfileError(f"{where}: {len(labels)} labels for {c.shape[0]} points")
        for target, params in kernels.items():
            if not all(math.isfinite(v) and v > 0 for v in params.to_dict().values()):
                raise ProfileError(f"{where}: hyperparameters of '{target}' must be positive finite numbers, "
                                   f"got {params.to_dict()}")
        return cls(c=c, r=r, d=d, r_kernel=kernels["r"], d_kernel=kernels["d"], source=data["source"],
                   labels=None if labels is None else tuple(labels))

    @classmethod
    def from_json(cls, text: str, *, where: str = "tiny formula") -> TinyFormula:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ProfileError(f"{where}: not valid JSON ({err.msg} at line {err.lineno})") from None
        return cls.from_dict(data, where=where)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> TinyFormula:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ProfileError(f"cannot read tiny-formula file {path}: {err.strerror}") from None
        return cls.from_json(text, where=str(path))


def fit_formula(c: Any, r: Any, d: Any, *, source: str,
                labels: Sequence[str] | None = None) -> TinyFormula:
    """Fit c -> r and c -> d (hyperparameters by marginal likelihood). `source` says what the points are,
    e.g. "released TinyNet models" or a sample directory; it is stored in the formula file."""
    c, r, d = _as_1d("c", c), _as_1d("r", r), _as_1d("d", d)
    _check_points(c, r, d)
    x = np.log(c)
    return TinyFormula(c=c, r=r, d=d, r_kernel=_optimise_hyperparameters(x, r),
                       d_kernel=_optimise_hyperparameters(x, d), source=source,
                       labels=None if labels is None else tuple(labels))


def formula_from_released_macs(macs: Mapping[str, float], base: str = "efficientnet_b0", *,
                               macs_origin: str = "exact counts (SPEC §3)") -> TinyFormula:
    """The default formula from MACs of the base model and tinynet_a..e (how the shipped file is made).
    `macs_origin` says where the MACs came from and is appended to the formula's source."""
    names = list(RELEASED_TINYNETS)
    absent = [n for n in [base, *names] if n not in macs]
    if absent:
        raise ProfileError(f"MACs missing for {', '.join(absent)}")
    c = np.array([macs[n] / macs[base] for n in names])
    r = np.array([RELEASED_TINYNETS[n][0] for n in names])
    d = np.array([RELEASED_TINYNETS[n][1] for n in names])
    return fit_formula(c, r, d, source=f"{RELEASED_SOURCE}; MACs: {macs_origin}", labels=names)


def load_default_formula() -> TinyFormula:
    """The formula shipped inside pyns: fitted on the five released TinyNets."""
    resource = resources.files("pyns.tinynet").joinpath("formulas", "tinynet_released.json")
    return TinyFormula.from_json(resource.read_text(encoding="utf-8"), where="pyns/tinynet/formulas/tinynet_released.json")


def spearman_with_macs(r: Any, d: Any, w: Any, macs: Any) -> dict[str, dict[str, float]]:
    """Spearman rank correlation of each multiplier with MACs, as the paper reports for Pareto models
    (r > d > w there, 0.81 for r). {"r": {"rho": .., "pvalue": ..}, "d": .., "w": ..}; NaN when a
    column is constant (rank correlation undefined)."""
    macs_array = _as_1d("macs", macs)
    result: dict[str, dict[str, float]] = {}
    for name, values in (("r", r), ("d", d), ("w", w)):
        array = _as_1d(name, values)
        if array.shape != macs_array.shape:
            raise ProfileError(f"'{name}' has {array.shape[0]} values but there are {macs_array.shape[0]} MACs")
        if array.shape[0] < 2 or np.ptp(array) == 0 or np.ptp(macs_array) == 0:
            result[name] = {"rho": math.nan, "pvalue": math.nan}
            continue
        rho, pvalue = stats.spearmanr(array, macs_array)
        result[name] = {"rho": float(rho), "pvalue": float(pvalue)}
    return result


def sample_multipliers(n: int, lo: float = 0.35, hi: float = 2.8, seed: int = 0) -> np.ndarray:
    """[n, 3] array of (r, d, w), each uniform in [lo, hi) (the paper's sampling box), from numpy's
    PCG64 generator seeded with `seed`. Keeping only models within the budget band is the caller's job."""
    if int(n) != n or n < 0:
        raise BudgetError(f"the number of samples must be a non-negative integer, got {n}")
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise BudgetError(f"the sampling range must satisfy 0 < lo < hi, got lo={lo}, hi={hi}")
    return np.random.default_rng(seed).uniform(lo, hi, size=(int(n), 3))  # columns: r, d, w


def macs_table(reference: Any) -> dict[str, float]:
    """{model name: MACs} from a reference-models JSON document ({"models": [{"name", "macs", ...}]} or
    a {name: {"macs": ...}} mapping)."""
    models = reference.get("models", reference) if isinstance(reference, dict) else reference
    entries = models.items() if isinstance(models, dict) else ((m.get("name"), m) for m in models)
    return {str(name): float(entry["macs"]) for name, entry in entries if isinstance(entry, dict) and "macs" in entry}


if __name__ == "__main__":  # regenerate the shipped default: python -m pyns.tinynet.formula reference_models.json OUT
    import sys

    reference_path = Path(sys.argv[1])
    formula = formula_from_released_macs(macs_table(json.loads(reference_path.read_text())),
                                         macs_origin=f"exact counts (SPEC §3) from {reference_path.name}")
    formula.save(sys.argv[2])
