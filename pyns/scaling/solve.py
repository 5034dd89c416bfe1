"""Budget solving: the widths that best use a params and/or MACs budget, on a one-dimensional family.

Every method turns one scalar t into integer widths; the C++ solver (csrc/solver.cpp) finds the
configuration on that family closest to the budget without exceeding it (`nearest`: from either side):

- `uniform`: t = m, every searchable width is `policy.width(default, m)` (int(c*m), or make_divisible
  under the EfficientNet/TinyNet policies, with their fixed stem and head floor). Needs no profile.
- `profile` (NeuralScale, SPEC §5 Algorithm 3): t = τ, width_l = round(α_l τ^β_l) (make_divisible under a
  divisible policy), at least 1.
- `from-config`: t = m applied to a given configuration c_l instead of the defaults (the "MorphNet"
  baseline: prune to 50%, then scale that configuration uniformly).

"Exact" means: the largest cost under the budget within the method's one-dimensional family (checked
against exhaustive search of the family in the tests). The family's steps leave part of the budget unused
(a few percent on small networks), so by default the answer is then *filled*: single channels are added
to symbols, in the order the method ranks them, while every budget still holds (csrc/solver.cpp,
`Family::fill`; its Python oracle is `pyns.scaling.oracle.py_fill`). The profile method adds one channel
at a time where φ'_l(τ) = α_l β_l τ^(β_l - 1) per unit of the relative cost of that channel is largest; the
uniform and from-config methods rank by that cost alone, in rounds: each round gives one channel to every
symbol that still fits, cheapest first. Tied symbols (an identity add, or a shortcut that exists only
while two widths differ) move together, their cost counted once; no width passes WIDTH_CAP x its default.
Adding stops when no single channel fits; where at most four groups can move (a small network, whose
channels are dear: one can be 2 % of the budget), an *exchange* follows: the best combination of -2..+2
channels per group around the filled widths, then adding once more (`result.exchanged` counts the
channels it traded; csrc/solver.cpp, configure_fill).
The result reports both the family solution (`result.family`) and the filled one; `fill=False` keeps
the family solution.

Non-searchable widths stay fixed. The family spans t from where every width is at its minimum to where the
first width reaches WIDTH_CAP times its default; a budget outside what that range can build is a
BudgetError naming the feasible range.

The pure-Python oracle of the C++ solver (the family, the same bisection, an exhaustive table) is in
pyns.scaling.oracle.
"""
from __future__ import annotations

import math
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from pyns import _core
from pyns.dsl.expr import Sym
from pyns.errors import BudgetError, ProfileError
from pyns.scaling.budget import Budget, parse_budget
from pyns.scaling.profile import Profile, ScalingWarning
from pyns.ties import fill_pairs, identity_adds

METHODS = ("uniform", "profile", "from-config")
# Keep in sync with enum Rounding / enum Status in csrc/solver.cpp.
FIXED, TRUNC, ROUND, MAKE_DIV8 = 0, 1, 2, 3
OK, BELOW, ABOVE = 0, 1, 2
# The family stops where the first width reaches 16x its default: far beyond any published scaling (the
# papers go to 2-3x) yet small enough that exhaustive tables of the family stay < 10^6 rows.
WIDTH_CAP = 16
# The exchange after the fill: -2..+2 steps per group on at most 4 movable groups (625 cost evaluations;
# why these numbers: kExchangeSteps / kExchangeGroups in csrc/solver.cpp, keep in sync).
EXCHANGE_STEPS, EXCHANGE_GROUPS = 2, 4
# Below a raw width of 0.25 every rounding gives its minimum (trunc and round: 0 -> 1; make_divisible: 8).
MIN_RAW = 0.25
# Breakpoints closer than this (relative) are one breakpoint: power laws put breakpoints of different
# symbols at the same real τ, which doubles place an ulp apart (kMerge in csrc/solver.cpp).
MERGE = 1e-12
# Smallest t the family starts at: power laws with tiny β would otherwise underflow to 0.
T_FLOOR = 1e-300


@dataclass(frozen=True)
class FamilySpec:
    """w_l(t) = max(floor_l, max(min_l, rounding_l(a_l t^b_l))) for every symbol, in program input order."""

    method: str
    symbols: tuple[str, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]
    rounding: tuple[int, ...]
    min_width: tuple[float, ...]
    floor_width: tuple[float, ...]
    t_lo: float
    t_hi: float

    @property
    def scalar_name(self) -> str:
        return "tau" if self.method == "profile" else "m"


@dataclass
class ScaleResult:
    """What a solve found. `gap_percent` = 100 (achieved - budget) / budget in the binding metric."""

    arch: str
    method: str
    widths: dict[str, int]
    params: int
    macs: int
    budget: dict[str, float | None]
    metric: str
    achieved: int
    gap_percent: float
    scalar: float
    scalar_name: str
    nearest: bool
    certified: bool
    evaluations: int
    resolution: int
    depth: float
    warnings: list[str] = field(default_factory=list)
    family: "FamilySolution | None" = None  # the family solve before the fill (None: not recorded)
    filled: bool = False                    # widths/params/macs include the fill
    fill_moves: int = 0                     # steps the fill added (one per tied group moved)
    exchanged: int = 0                      # channel steps the exchange traded between groups (0: none)

    @property
    def feasible(self) -> bool:
        return all(v is None or cost <= v for v, cost in ((self.budget["params"], self.params),
                                                          (self.budget["macs"], self.macs)))

    @property
    def flops(self) -> int:
        return 2 * self.macs

    def to_dict(self) -> dict:
        return {"arch": self.arch, "method": self.method, "budget": dict(self.budget), "metric": self.metric,
                "params": self.params, "macs": self.macs, "flops": self.flops, "achieved": self.achieved,
                "gap_percent": self.gap_percent, "feasible": self.feasible, "widths": dict(self.widths),
                "scalar": self.scalar, "scalar_name": self.scalar_name, "nearest": self.nearest,
                "exact_by": "bisection" if self.certified else "exhaustive scan",
                "evaluations": self.evaluations, "resolution": self.resolution, "depth_mult": self.depth,
                "warnings": list(self.warnings), "filled": self.filled, "fill_moves": self.fill_moves,
                "exchanged": self.exchanged,
                "family": self.family.to_dict() if self.family is not None else None}


@dataclass(slots=True)
class FamilySolution:
    """The exact solve on the method's one-dimensional family, before the fill."""

    widths: dict[str, int]
    params: int
    macs: int
    metric: str
    achieved: int
    gap_percent: float

    def to_dict(self) -> dict:
        return {"widths": dict(self.widths), "params": self.params, "macs": self.macs, "metric": self.metric,
                "achieved": self.achieved, "gap_percent": self.gap_percent}


@dataclass
class BatchResult:
    """Many budgets at once. Rows with status != 0 (1: below the smallest network, 2: above the largest)
    have zero widths and costs."""

    method: str
    symbols: list[str]
    widths: np.ndarray    # [n, len(symbols)] int64
    params: np.ndarray    # [n] int64
    macs: np.ndarray      # [n] int64
    scalar: np.ndarray    # [n] float64
    status: np.ndarray    # [n] int32
    # With the fill (the default), widths/params/macs are filled and these hold the family solutions:
    family_widths: np.ndarray | None = None  # [n, len(symbols)] int64
    family_params: np.ndarray | None = None  # [n] int64
    family_macs: np.ndarray | None = None    # [n] int64
    fill_moves: np.ndarray | None = None     # [n] int32
    exchanged: np.ndarray | None = None      # [n] int32: channel steps the exchange traded

    def widths_at(self, i: int) -> dict[str, int]:
        return {s: int(w) for s, w in zip(self.symbols, self.widths[i])}


# ---- family construction -----------------------------------------------------------------------
def _inverse(raw: float, a: float, b: float) -> float:
    """t with a t^b = raw, kept within the doubles (tiny |β| would overflow t)."""
    if b == 1.0:
        return raw / a
    return math.exp(min(max(math.log(raw / a) / b, -690.0), 690.0))  # e^690 ~ 1e300


def _domain(defaults: Sequence[int], a, b, rounding) -> tuple[float, float]:
    """[t_lo, t_hi]: from every growing width at its minimum up to the first width at WIDTH_CAP x its
    default. A width that shrinks as t grows (β < 0) bounds t from below instead, by the same cap."""
    start, stop, shrinking_lo, shrinking_min = [], [], [], []
    for d, ai, bi, r in zip(defaults, a, b, rounding):
        if r == FIXED or bi == 0:
            continue
        at_cap = _inverse(WIDTH_CAP * d, ai, bi)
        at_min = _inverse(MIN_RAW, ai, bi)
        if bi > 0:
            start.append(at_min)
            stop.append(at_cap)
        else:
            shrinking_lo.append(at_cap)
            shrinking_min.append(at_min)
    if not start and not shrinking_lo:
        raise ProfileError("no searchable width depends on the scaling variable, so no budget can be met")
    t_lo = max(([min(start)] if start else []) + shrinking_lo)
    t_hi = min(stop) if stop else max(shrinking_min)
    t_lo, t_hi = max(t_lo, T_FLOOR), min(t_hi, 1e300)
    if not t_lo < t_hi:
        raise ProfileError("the profile's power laws leave no τ at which every width stays within "
                           f"{WIDTH_CAP}x its default; check its alpha and beta values")
    return float(t_lo), float(t_hi)


def _law(sym, method: str, base: Mapping[str, int], profile: Profile | None, policy):
    """(a, b, rounding, min width, floor width) of one symbol: w(t) = max(floor, max(min, round(a t^b)))."""
    divisible = policy.width_rounding != "int"
    if not sym.searchable:
        return float(sym.default), 0.0, FIXED, 1.0, 0.0
    if method == "profile":
        if sym.name not in profile.fits:
            raise ProfileError(f"the profile has no fit for `{sym.name}`")
        fit = profile.fits[sym.name]
        return fit.alpha, fit.beta, MAKE_DIV8 if divisible else ROUND, float(sym.minimum), 0.0
    c = float(base[sym.name])
    if "stem" in sym.roles and policy.fix_stem:
        return c, 0.0, FIXED, 1.0, 0.0
    floor = c if "head" in sym.roles and policy.head_floor else 0.0
    return c, 1.0, MAKE_DIV8 if divisible else TRUNC, float(sym.minimum), floor


def _check_tied_laws(arch, network, laws) -> None:
    """Symbols joined by an identity add must get one law, or the family holds networks that cannot be
    built (a DSLError-style positioned error at the residual)."""
    index = {name: i for i, name in enumerate(network.symbol_names)}
    for node in identity_adds(network):
        if isinstance(node.in_ch, Sym) and isinstance(node.out_ch, Sym):
            i, j = index[node.in_ch.name], index[node.out_ch.name]
            if laws[i] != laws[j]:
                raise ProfileError(f"`{node.in_ch.name}` and `{node.out_ch.name}` are tied by this identity add "
                                   "but would scale differently (different power laws or configuration "
                                   "widths), giving widths that cannot be built", pos=node.pos,
                                   hint="give tied symbols the same fit / the same configuration width")


def fill_steps(spec: FamilySpec) -> list[float]:
    """Channels one fill move adds to a symbol: one, under every policy. Under a make_divisible policy
    the filled widths are then not all multiples of 8 (steps of 8 leave up to 0.9 % of an EfficientNet-B0
    budget unused at 0.125x and 0.9 % of digits_effnet's; single channels stay within 0.3 %)."""
    return [1.0] * len(spec.rounding)


def family_spec(arch, method: str = "uniform", *, profile: Profile | None = None,
                config: Mapping[str, int] | None = None, depth: float = 1.0,
                resolution: int | None = None) -> FamilySpec:
    """The one-dimensional family a method searches, for the C++ solver and the oracle."""
    network = arch.ir(depth, resolution)
    policy = arch.policy
    if method not in METHODS:
        raise BudgetError(f"unknown method `{method}`; choose one of {', '.join(METHODS)}")
    base = dict(network.defaults())
    if method == "from-config":
        if not config:
            raise BudgetError("the from-config method needs a configuration (--config c1=32,c2=64,...)")
        base.update(arch.widths(config))
    laws = [_law(sym, method, base, profile, policy) for sym in network.symbols]
    _check_tied_laws(arch, network, laws)
    a, b, rounding, mins, floors = (list(column) for column in zip(*laws))
    defaults = [s.default for s in network.symbols]
    t_lo, t_hi = _domain(defaults, a, b, rounding)
    return FamilySpec(method, tuple(network.symbol_names), tuple(a), tuple(b), tuple(rounding),
                      tuple(mins), tuple(floors), t_lo, t_hi)


# C++ families per arch, keyed by (spec, depth, resolution): building one may certify monotonicity or scan.
_FAMILIES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def cpp_family(arch, spec: FamilySpec, depth: float = 1.0, resolution: int | None = None):
    cache = _FAMILIES.setdefault(arch, {})
    key = (spec, float(depth), resolution)
    if key not in cache:
        _, program, _ = arch.compiled(depth, resolution)
        f64 = lambda v: np.asarray(v, dtype=np.float64)  # noqa: E731
        family = _core.ScaleFamily(program, f64(spec.a), f64(spec.b), np.asarray(spec.rounding, np.int32),
                                   f64(spec.min_width), f64(spec.floor_width), spec.t_lo, spec.t_hi)
        network = arch.ir(depth, resolution)
        caps = [float(WIDTH_CAP * s.default) for s in network.symbols]
        pairs = np.asarray(fill_pairs(network), dtype=np.int32).reshape(-1)
        family.configure_fill(1 if spec.method == "profile" else 0, f64(caps), f64(fill_steps(spec)), pairs)
        cache[key] = family
    return cache[key]


# ---- budgets -----------------------------------------------------------------------------------
def resolve_budgets(arch, params=None, macs=None, *, depth: float = 1.0,
                    resolution: int | None = None) -> dict[str, float | None]:
    """{"params": float|None, "macs": float|None}; `0.25x` budgets are fractions of the default network."""
    if params is None and macs is None:
        raise BudgetError("give a budget: params and/or MACs (e.g. --params 0.58M)")
    fast = _plain_budget(params), _plain_budget(macs)
    if all(f is not None or v is None for f, v in zip(fast, (params, macs))):
        return {"params": fast[0], "macs": fast[1]}  # plain positive numbers: what parse_budget would give
    parsed = {"params": parse_budget(params, "params budget") if params is not None else None,
              "macs": parse_budget(macs, "MACs budget") if macs is not None else None}
    default = None
    out: dict[str, float | None] = {}
    for metric, budget in parsed.items():
        if budget is None:
            out[metric] = None
            continue
        if budget.relative and default is None:
            default = arch.count(depth=depth, resolution=resolution)
        value = budget.resolve(getattr(default, metric)) if budget.relative else budget.value
        out[metric] = int(value) if float(value).is_integer() else value
    return out


def _plain_budget(v):
    """A budget given as a plain positive finite int or float, as resolve_budgets stores it; else None."""
    if type(v) not in (int, float) or not 0 < v < math.inf:
        return None
    as_float = float(v)
    return int(as_float) if as_float.is_integer() else as_float


def _nan(v: float | None) -> float:
    return math.nan if v is None else float(v)


def _binding(budget: Mapping[str, float | None], params: int, macs: int) -> str:
    """The metric closest to (or furthest over) its budget."""
    costs = {"params": params, "macs": macs}
    given = [k for k in ("params", "macs") if budget[k] is not None]
    if len(given) == 1:
        return given[0]
    rel = {k: (costs[k] - budget[k]) / budget[k] for k in given}
    return max(given, key=lambda k: rel[k])


def _range_error(arch, spec: FamilySpec, family, status: int, budget: Mapping[str, float | None]) -> BudgetError:
    pmin, mmin, pmax, mmax = family.cost_range()
    what = " and ".join(f"{k} <= {int(v):,}" if float(v).is_integer() else f"{k} <= {v:,.1f}"
                        for k, v in budget.items() if v is not None)
    span = f"feasible budgets are params {int(pmin):,} to {int(pmax):,}, MACs {int(mmin):,} to {int(mmax):,}"
    family_name = f"the {spec.method} family of {arch.name}"
    if status == BELOW:
        return BudgetError(f"no network meets {what}: even the smallest one in {family_name} (every width at "
                           f"its minimum) has {int(pmin):,} params and {int(mmin):,} MACs; {span}")
    return BudgetError(f"{what} is more than {family_name} can use: its largest network (widths up to "
                       f"{WIDTH_CAP}x the defaults) has {int(pmax):,} params and {int(mmax):,} MACs; {span}")


# ---- planning: method, profile, warnings -------------------------------------------------------
@dataclass
class _Plan:
    method: str
    spec: FamilySpec
    profile: Profile | None
    notes: list[str]
    family: object = None
    resolution: int = 0
    key: tuple = ()  # what the plan was made from (see _prepared)


def _plan(arch, method, profile, config, depth, resolution) -> _Plan:
    notes: list[str] = []
    if isinstance(profile, (str, Path)):
        profile = Profile.load(profile)
    if method is None:
        method = "profile" if profile is not None else "from-config" if config else "uniform"
    if method not in METHODS:
        raise BudgetError(f"unknown method `{method}`; choose one of {', '.join(METHODS)}")
    if method == "profile":
        if profile is None:
            raise ProfileError("the profile method needs a profile (--profile FILE, from `pyns fit`)")
        profile.validate()
        if profile.fallback == "uniform":
            notes.append(f"the profile has too few points ({profile.points}) for a fit and falls back to "
                         "uniform scaling")
            method, profile = "uniform", None
        else:
            notes.extend(profile.check_arch(arch))
            negative = [n for n, f in profile.fits.items() if f.beta < 0]
            if negative:
                notes.append(f"negative β for {', '.join(negative)}: those widths shrink as the budget grows; "
                             "the cost may not be monotone, so the family is scanned exhaustively")
    elif profile is not None:
        notes.append(f"the {method} method ignores the profile")
        profile = None
    if config and method != "from-config":
        raise BudgetError(f"a configuration (--config) is only used by the from-config method, not {method}")
    spec = family_spec(arch, method, profile=profile, config=config, depth=depth, resolution=resolution)
    return _Plan(method, spec, profile, notes)


# Plans (method, family spec, C++ family with its fill set up) per arch, so that repeated solves with the
# same method, profile object and configuration skip rebuilding them. A Profile is mutable: a plan is
# reused only while the same object still holds the same fits and settings (a cheap identity-level check).
_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# Distinct plans kept per arch before the cache starts over: sweeps use a handful; this bounds a
# pathological caller that makes a new profile object per solve.
_MAX_PLANS = 64


def _profile_state(profile: Profile | None) -> tuple:
    if profile is None:
        return ()
    return (profile.metric, profile.fallback, profile.tau_range, profile.points, profile.arch, profile.arch_hash,
            dict(profile.fits))


def _prepared(arch, method, profile, config, depth, resolution) -> _Plan:
    if isinstance(profile, (str, Path)):
        profile = Profile.load(profile)  # read every time: the file may have changed
        return _new_plan(arch, method, profile, config, depth, resolution, ())
    config_key = tuple(sorted(config.items())) if config else None
    key = (method, id(profile), config_key, float(depth), resolution)
    plans = _PLANS.get(arch)
    if plans is None:
        plans = _PLANS[arch] = {}
    plan = plans.get(key)
    state = _profile_state(profile)
    if plan is not None and plan.key[0] is profile and plan.key[1] == state:
        return plan
    if len(plans) >= _MAX_PLANS:
        plans.clear()
    plan = _new_plan(arch, method, profile, config, depth, resolution, (profile, state))
    plans[key] = plan
    return plan


def _new_plan(arch, method, profile, config, depth, resolution, key) -> _Plan:
    plan = _plan(arch, method, profile, config, depth, resolution)
    plan.family = cpp_family(arch, plan.spec, depth, resolution)
    plan.resolution = arch.ir(depth, resolution).resolution
    plan.key = key
    return plan


def _warn(notes: list[str]) -> None:
    for note in notes:
        warnings.warn(note, ScalingWarning, stacklevel=3)


# ---- public API --------------------------------------------------------------------------------
def solve_budget(arch, params=None, macs=None, *, method: str | None = None,
                 profile: Profile | str | Path | None = None, config: Mapping[str, int] | None = None,
                 nearest: bool = False, depth: float = 1.0, resolution: int | None = None,
                 fill: bool = True) -> ScaleResult:
    """Widths for a params and/or MACs budget (numbers, or strings like "0.58M" / "0.25x").

    Both budgets given: both must hold (the tighter binds). Default: the largest configuration of the
    method's family within budget, then filled (see the module docstring; `fill=False`: the family
    solution itself); `nearest=True`: the family configuration closest from either side (filled only
    when it is under budget). Raises BudgetError for budgets no configuration of the family can meet or
    use; ProfileError for unusable profiles. Warnings (profile fallback, negative β, extrapolation) are
    issued as ScalingWarning and listed in the result.
    """
    plan = _prepared(arch, method, profile, config, depth, resolution)
    budget = resolve_budgets(arch, params, macs, depth=depth, resolution=resolution)
    family = plan.family
    bp, bm = _nan(budget["params"]), _nan(budget["macs"])
    try:
        out = family.solve(bp, bm, nearest, fill)
    except (RuntimeError, OverflowError) as err:  # the exhaustive table's size guard; inexact costs
        raise BudgetError(str(err)) from None
    status, t, p, m, w, evaluations = out[:6]
    if status != OK:
        raise _range_error(arch, plan.spec, family, status, budget)
    notes = list(plan.notes)
    if plan.profile is not None:
        far = plan.profile.extrapolation(t)
        if far:
            notes.append(far)
    if notes:
        _warn(notes)
    symbols = plan.spec.symbols
    solution = _solution(symbols, w, p, m, budget)
    final, moves, exchanged = solution, 0, 0
    if fill:
        final = _solution(symbols, out[8], out[6], out[7], budget)
        moves, exchanged = out[9], out[10]
    return ScaleResult(arch=arch.name, method=plan.method, widths=final.widths, params=final.params,
                       macs=final.macs, budget=budget, metric=final.metric, achieved=final.achieved,
                       gap_percent=final.gap_percent, scalar=t, scalar_name=plan.spec.scalar_name,
                       nearest=nearest, certified=family.certified, evaluations=evaluations,
                       resolution=plan.resolution, depth=depth, warnings=notes, family=solution,
                       filled=bool(fill), fill_moves=moves, exchanged=exchanged)


def _solution(symbols, w, p: int, m: int, budget) -> FamilySolution:
    bp, bm = budget["params"], budget["macs"]
    # the binding metric (as _binding): the one closest to, or furthest over, its budget; ties: params
    if bm is None or (bp is not None and (p - bp) / bp >= (m - bm) / bm):
        metric, achieved, limit = "params", p, bp
    else:
        metric, achieved, limit = "macs", m, bm
    return FamilySolution(dict(zip(symbols, map(int, w.tolist()))), p, m, metric, achieved,
                          100.0 * (achieved - limit) / limit)


def solve_batch(arch, params=None, macs=None, *, method: str | None = None,
                profile: Profile | str | Path | None = None, config: Mapping[str, int] | None = None,
                nearest: bool = False, depth: float = 1.0, resolution: int | None = None,
                fill: bool = True, threads: int | None = None) -> BatchResult:
    """Many budgets in one C++ call (sweeps, plots): `params` and/or `macs` are 1-D arrays of counts.

    The budgets are spread over `threads` OpenMP threads (None: every available core, OMP_NUM_THREADS
    if set); the answers do not depend on it. `fill` as in solve_budget."""
    plan = _prepared(arch, method, profile, config, depth, resolution)
    if params is None and macs is None:
        raise BudgetError("give budgets: params and/or MACs arrays")
    arrays = [np.atleast_1d(np.asarray(v, dtype=np.float64)) if v is not None else None for v in (params, macs)]
    n = max(a.size for a in arrays if a is not None)
    bp, bm = (a if a is not None else np.full(n, np.nan) for a in arrays)
    if bp.size != bm.size:
        raise BudgetError("params and MACs budget arrays must have the same length")
    for given in arrays:
        if given is not None and not np.all(np.isfinite(given) & (given > 0)):
            raise BudgetError("every budget must be a positive finite number")
    if threads is not None and not (isinstance(threads, int) and threads >= 1):
        raise BudgetError(f"threads must be a whole number >= 1, got {threads!r}")
    if plan.notes:
        _warn(plan.notes)
    try:
        out = plan.family.solve_batch(bp, bm, nearest, fill, threads or 0)
    except (RuntimeError, OverflowError) as err:
        raise BudgetError(str(err)) from None
    status, t, p, m, w = out[:5]
    if not fill:
        return BatchResult(plan.method, list(plan.spec.symbols), w.astype(np.int64), p, m, t, status)
    fp, fm, fw, moves, exchanged = out[5:]
    return BatchResult(plan.method, list(plan.spec.symbols), fw.astype(np.int64), fp, fm, t, status,
                       w.astype(np.int64), p, m, moves, exchanged)


__all__ = ["solve_budget", "solve_batch", "ScaleResult", "BatchResult", "FamilySpec", "FamilySolution",
           "family_spec", "fill_steps",
           "cpp_family", "resolve_budgets", "METHODS", "WIDTH_CAP", "Budget"]
