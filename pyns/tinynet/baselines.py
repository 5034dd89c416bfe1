"""TinyNet's baselines for a MACs budget: the inverse giant formula, and r, d or w alone (see pyns.tinynet.solve).

`solve_giant` bisects on EfficientNet's compound-scaling exponent φ, `solve_resolution_only`,
`solve_depth_only` and `solve_width_only` on one multiplier with the other two at 1. Each returns the
largest network on its path whose MACs do not exceed the budget, as the fields of a `pyns.tinynet.solve.TinyResult`;
`solve_width` is the exact width solve at a fixed (d, resolution) that the tiny method shares.
"""
from __future__ import annotations

import math

from pyns.arch import Arch
from pyns.errors import BudgetError, DSLError
from pyns.policies import scale_resolution
from pyns.scaling.solve import cpp_family, family_spec, solve_budget
from pyns.tinynet.cost import CostPath

__all__ = ["GIANT_ALPHA", "GIANT_BETA", "GIANT_GAMMA", "giant_multipliers", "solve_width", "solve_giant",
           "solve_resolution_only", "solve_depth_only", "solve_width_only"]

# EfficientNet's compound-scaling coefficients (Tan & Le 2019, found by grid search at φ = 1).
GIANT_ALPHA = 1.2   # depth
GIANT_BETA = 1.1    # width
GIANT_GAMMA = 1.15  # resolution

# φ search window: EfficientNet-B7 is φ ≈ 7 on the grown side; at φ = -30 every multiplier is below 0.02,
# i.e. every width and repeat count is already at its minimum, so going lower changes nothing but resolution.
_PHI_MIN, _PHI_MAX = -30.0, 12.0
# Largest single-dimension multipliers searched for the r and d baselines (budgets above the default network).
_R_MAX, _D_MAX = 16.0, 16.0
# Bisection on a real multiplier stops when the bracket is this narrow (relative): far below any step of
# the rounding (a repeat count of 1000 changes at steps of 1e-3 in d), so the configuration found is exact.
_BISECT_REL_TOL = 1e-12
_BISECT_MAX_STEPS = 200


def giant_multipliers(phi: float) -> tuple[float, float, float]:
    """(r, d, w) of EfficientNet's compound scaling at φ (negative φ: the inverse giant formula)."""
    return GIANT_GAMMA ** phi, GIANT_ALPHA ** phi, GIANT_BETA ** phi


def _largest_fitting(fits, lo: float, hi: float) -> float:
    """Largest x in [lo, hi] with fits(x), for a predicate that is true up to some point and false after
    (a non-decreasing cost against a budget). Requires fits(lo); returns hi when fits(hi)."""
    if fits(hi):
        return hi
    for _ in range(_BISECT_MAX_STEPS):
        if hi - lo <= _BISECT_REL_TOL * max(abs(lo), abs(hi), 1.0):
            break
        mid = 0.5 * (lo + hi)
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def solve_width(arch: Arch, budget: float, depth: float, resolution: int):
    """The uniform-width solve at fixed (d, resolution): (ScaleResult, w_range).

    The solver reports the smallest multiplier giving its widths; the next breakpoint of any width on the
    same family (where the next wider network, which no longer fits, begins) closes the interval.
    """
    # TinyNet's width dimension is the multiplier itself: the family solution, not filled.
    result = solve_budget(arch, macs=budget, method="uniform", depth=depth, resolution=resolution, fill=False)
    family = cpp_family(arch, family_spec(arch, "uniform", depth=depth, resolution=resolution), depth, resolution)
    upper = min(family.next_breakpoint(l, result.scalar) for l in range(len(arch.network.symbols)))
    return result, (float(result.scalar), float(upper) if math.isfinite(upper) else None)


def solve_width_only(arch: Arch, budget: float):
    try:
        result, w_range = solve_width(arch, budget, 1.0, arch.resolution)
    except BudgetError as err:
        raise BudgetError(f"no width alone meets the budget: {err}") from None
    return dict(r=1.0, d=1.0, w=float(result.scalar), resolution=arch.resolution, widths=result.widths,
                params=result.params, macs=result.macs, w_range=w_range, notes=[])


def _buildable(count) -> bool:
    """Does the network exist? Too small an input leaves a layer without pixels (a DSLError), or none at all."""
    try:
        count()
    except (DSLError, BudgetError):
        return False
    return True


def _smallest_error(how: str, budget: float, macs: int) -> BudgetError:
    return BudgetError(f"the budget of {budget:,.0f} MACs is below the smallest network reachable {how} "
                       f"({macs:,} MACs); raise the budget or choose another method")


def _ratio_for(resolution: int, base: int) -> float:
    """The smallest r with int(base * r) == resolution (resolution / base, nudged past rounding error)."""
    r = resolution / base
    while scale_resolution(base, r) < resolution:
        r = math.nextafter(r, math.inf)
    return r


def solve_resolution_only(arch: Arch, budget: float):
    base = arch.resolution

    def macs_at(resolution: int) -> int:
        return arch.count(depth=1.0, resolution=resolution).macs

    lo = 1
    while not _buildable(lambda: macs_at(lo)):  # pooling layers may need a few pixels to have any output
        lo += 1
        if lo > base:
            raise BudgetError(f"{arch.name} cannot be built at any resolution up to its default {base}")
    if macs_at(lo) > budget:
        raise _smallest_error("by shrinking the resolution alone", budget, macs_at(lo))
    hi = max(lo, int(base * _R_MAX))
    if macs_at(hi) <= budget:
        raise BudgetError(f"the budget of {budget:,.0f} MACs is more than resolution alone can use "
                          f"(up to {_R_MAX:g}x the default, {macs_at(hi):,} MACs)")
    while hi - lo > 1:  # integer bisection: MACs never fall as the input grows
        mid = (lo + hi) // 2
        if macs_at(mid) <= budget:
            lo = mid
        else:
            hi = mid
    cost = arch.count(depth=1.0, resolution=lo)
    return dict(r=_ratio_for(lo, base), d=1.0, w=1.0, resolution=lo, widths=cost.widths, params=cost.params,
                macs=cost.macs, notes=[])


def solve_depth_only(arch: Arch, budget: float):
    path = CostPath(arch)
    if not path.base_counts:
        raise BudgetError(f"{arch.name} has no repeat statements, so its depth cannot be scaled")

    def macs_at(d: float) -> int:
        return path.count(1.0, d, None)[1]

    lowest = 1e-6  # every repeat count is max(1, ...) here
    if macs_at(lowest) > budget:
        raise _smallest_error("by shrinking the depth alone", budget, macs_at(lowest))
    d = _largest_fitting(lambda x: macs_at(x) <= budget, lowest, _D_MAX)
    if d == _D_MAX:
        raise BudgetError(f"the budget of {budget:,.0f} MACs is more than depth alone can use "
                          f"(up to {_D_MAX:g}x the default)")
    params, macs, widths, resolution = path.count(1.0, d, None)
    return dict(r=1.0, d=d, w=1.0, resolution=resolution, widths=widths, params=params, macs=macs, notes=[])


def solve_giant(arch: Arch, budget: float):
    path = CostPath(arch)

    def macs_at(phi: float) -> int:
        return path.count(*giant_multipliers(phi))[1]

    # The lowest φ whose network can be built (at least one pixel, pooling layers with an output) bounds the
    # search from below.
    phi_lo = _PHI_MIN
    while not _buildable(lambda: macs_at(phi_lo)):
        phi_lo += 0.25  # 1.15^0.25 = 3.5% steps in resolution: fine enough to find the first valid size
        if phi_lo > 0:
            raise BudgetError(f"{arch.name} cannot be built below its default size by the giant formula")
    if macs_at(phi_lo) > budget:
        raise _smallest_error("by the inverse giant formula", budget, macs_at(phi_lo))
    phi = _largest_fitting(lambda x: macs_at(x) <= budget, phi_lo, _PHI_MAX)
    if phi == _PHI_MAX:
        raise BudgetError(f"the budget of {budget:,.0f} MACs is more than the giant formula reaches "
                          f"(φ up to {_PHI_MAX:g})")
    r, d, w = giant_multipliers(phi)
    params, macs, widths, resolution = path.count(r, d, w)
    return dict(r=r, d=d, w=w, resolution=resolution, widths=widths, params=params, macs=macs, phi=phi,
                notes=[])
