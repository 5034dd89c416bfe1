"""TinyNet's tiny formula on a real architecture (SPEC §6): resolution r, depth d and width w for a MACs budget.

Methods, each returning the largest network on its one-dimensional path whose MACs do not exceed the budget:

- `tiny`: r and d from the Gaussian-process regressions c -> r, c -> d of a tiny formula (c = budget / MACs of
  the default network), then the width solved on the real network at that (r, d) by the exact uniform-width
  solver (`pyns.scaling.solve.solve_budget`). The paper's closed form w = sqrt(c / (r² d)) is reported beside
  it: it ignores the fixed stem and head floor, so it usually misses the budget.
- `giant`: the inverse giant formula, EfficientNet's compound scaling run backwards: d = 1.2^φ, w = 1.1^φ,
  r = 1.15^φ, with φ continuous: the largest φ whose network fits the budget (the cost is a non-decreasing
  step function of φ, so bisection finds it). The paper's EfficientNet-B^-1..B^-4 are this method at its
  "about 200M, 100M, 50M, 25M FLOPs" (the paper's FLOPs are MACs: B0 = 387M), i.e. at φ ≈ -1.19, -2.36,
  -3.80, -5.38, not at φ = -k: φ = -k gives 246M / 132M / 83M / 38M MACs (301M / 177M / 107M / 46M with
  ceil depth). `efficientnet_b_minus(k)` builds them; they match the paper's Table 3 within 3% in
  params and 3.5% in MACs.
- `r`, `d`, `w`: shrink (or grow) one dimension alone, the other two at 1.

Policies (how multipliers become integers, `pyns.policies`): `giant` uses `efficientnet_round` (EfficientNet's
widths, stem and head scaling with w, and depth round(n·d) as in the TinyNet code: with EfficientNet's ceil
the depth never shrinks at φ = -1 and the paper's B^-k cannot be reproduced), every other method TinyNet's
(depth round, stem fixed, head floor), unless a policy is given explicitly. The default network (all multipliers 1) is the same under every policy, so c and `0.25x`
budgets mean the same thing for all methods.

MACs follow SPEC §3 (multiply-accumulates of conv and linear layers, batch 1; FLOPs = 2 x MACs).

Modules: pyns.tinynet.cost (repeat counts and costs at (r, d, w)), pyns.tinynet.baselines (the giant, r, d and w
paths). This module holds the tiny method, `solve_tiny` and the resolved .arch of a result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyns.arch import Arch, load, loads
from pyns.errors import BudgetError, DSLError, PynsError
from pyns.policies import scale_resolution
from pyns.runfiles import atomic_write_text
from pyns.scaling.budget import Budget, parse_budget
from pyns.scaling.resolved import resolved_text
from pyns.scaling.solve import ScaleResult
from pyns.tinynet.baselines import (
    giant_multipliers,
    solve_depth_only,
    solve_giant,
    solve_resolution_only,
    solve_width,
    solve_width_only,
)
from pyns.tinynet.cost import CostPath, Stage, record_repeats, stage_repeats, with_policy
from pyns.tinynet.formula import TinyFormula, load_default_formula
from pyns.tinynet.options import METHODS

__all__ = [
    "METHODS", "DEFAULT_POLICY", "B_MINUS_MACS", "Stage", "TinyResult", "solve_tiny", "resolve_macs_budget",
    "giant_cost", "efficientnet_b_minus",
    "resolved_tiny_text", "write_resolved_tiny",
]

DEFAULT_POLICY = {"tiny": "tinynet", "r": "tinynet", "d": "tinynet", "w": "tinynet", "giant": "efficientnet_round"}
# MACs budgets of the TinyNet paper's EfficientNet-B^-k ("about 200M, 100M, 50M, 25M FLOPs", §4.1; its FLOPs
# count multiply-accumulates, B0 = 387M): 2^-k of B0's cost, rounded as the paper states them.
B_MINUS_MACS = {1: 200_000_000, 2: 100_000_000, 3: 50_000_000, 4: 25_000_000}


@dataclass
class TinyResult:
    """A network for a MACs budget, with the multipliers that produced it."""

    arch: str
    method: str
    policy: str
    budget_macs: float        # the MACs budget (absolute)
    budget_text: str          # as the user wrote it
    base_macs: int            # MACs of the default network (c = budget / base_macs)
    base_params: int
    base_resolution: int
    r: float
    d: float
    w: float
    resolution: int
    stages: list[Stage]
    widths: dict[str, int]
    searchable: list[str]
    params: int
    macs: int
    closed_form_w: float | None = None  # the paper's sqrt(c / (r² d)) (tiny method)
    r_std: float | None = None          # GP predictive standard deviations (tiny method); near the noise
    d_std: float | None = None          # floor at the formula's own points, so the CLI shows r_loo/d_loo
    r_loo: dict | None = None           # leave-one-out error of the c -> r GP: {"rms", "max", "n"} (tiny)
    d_loo: dict | None = None
    w_range: tuple[float, float | None] | None = None  # every w in [lo, hi) gives these widths, hi no
    #                                                    longer fits (tiny and w methods); w = lo
    phi: float | None = None            # giant method
    formula_source: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def c(self) -> float:
        """The budget as a fraction of the default network's MACs."""
        return self.budget_macs / self.base_macs

    @property
    def achieved_c(self) -> float:
        return self.macs / self.base_macs

    @property
    def flops(self) -> int:
        return 2 * self.macs

    @property
    def within_budget(self) -> bool:
        return self.macs <= self.budget_macs

    @property
    def repeats(self) -> list[int]:
        return [s.repeats for s in self.stages]

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch, "method": self.method, "policy": self.policy,
            "budget": {"macs": self.budget_macs, "flops": 2 * self.budget_macs, "c": self.c,
                       "text": self.budget_text},
            "base": {"macs": self.base_macs, "params": self.base_params, "resolution": self.base_resolution},
            "r": self.r, "d": self.d, "w": self.w, "resolution": self.resolution,
            "depth_repeats": self.repeats,
            "stages": [{"line": s.line, "base": s.base, "repeats": s.repeats} for s in self.stages],
            "widths": dict(self.widths), "searchable": list(self.searchable),
            "params": self.params, "macs": self.macs, "flops": self.flops, "c_achieved": self.achieved_c,
            "within_budget": self.within_budget,
            "closed_form_w": self.closed_form_w, "r_std": self.r_std, "d_std": self.d_std,
            "r_loo": self.r_loo, "d_loo": self.d_loo,
            "w_range": None if self.w_range is None else list(self.w_range), "phi": self.phi,
            "formula": self.formula_source, "notes": list(self.notes),
        }


# ---- budgets -----------------------------------------------------------------------------------------


def resolve_macs_budget(arch: Arch, macs: str | float | Budget | None = None,
                        flops: str | float | Budget | None = None) -> tuple[float, str]:
    """(MACs budget, text) from `--macs` or `--flops` (FLOPs = 2 x MACs); `0.25x` = a fraction of the
    default network's MACs."""
    if (macs is None) == (flops is None):
        raise BudgetError("give exactly one budget: MACs (e.g. 100M or 0.25x) or FLOPs (e.g. 200M)")
    default_macs = arch.count().macs
    if macs is not None:
        budget = parse_budget(macs, "MACs budget")
        value = budget.resolve(default_macs)
        text = budget.text or str(macs)
        return value, (f"{text} of the default network's MACs" if budget.relative else f"{text} MACs")
    budget = parse_budget(flops, "FLOPs budget")
    text = budget.text or str(flops)
    if budget.relative:
        return budget.resolve(default_macs), f"{text} of the default network's FLOPs"
    return budget.value / 2, f"{text} FLOPs"


# ---- the methods -------------------------------------------------------------------------------------


def _tiny(arch: Arch, budget: float, formula: TinyFormula, base_macs: int):
    c = budget / base_macs
    pred = formula.predict(c)
    r, r_std, d, d_std = (float(v) for v in pred)
    notes: list[str] = []
    lo, hi = formula.c_range
    if not lo <= c <= hi:
        notes.append(f"c = {c:.4g} is outside the budgets the formula was fitted on ({lo:.4g} to {hi:.4g}); "
                     "the GP reverts towards the mean of its data there, so r and d are extrapolations")
    if r <= 0 or d <= 0:
        raise BudgetError(f"the tiny formula predicts r = {r:.4g}, d = {d:.4g} at c = {c:.4g}; both must be "
                          "positive (the budget is far outside what the formula was fitted on)")
    resolution = scale_resolution(arch.resolution, r)
    if resolution < 1:
        raise BudgetError(f"the tiny formula's r = {r:.4g} gives an input of {resolution} pixels at c = {c:.4g}")
    try:
        result, w_range = solve_width(arch, budget, d, resolution)
    except DSLError as err:
        raise BudgetError(f"the formula's r = {r:.4g} gives a {resolution}x{resolution} input, at which "
                          f"{arch.name} cannot be built ({err.message}); this formula does not suit this "
                          "architecture at this budget") from None
    except BudgetError as err:
        where = f" (c = {c:.3g}, outside the formula's {lo:.3g} to {hi:.3g})" if notes else ""
        raise BudgetError(f"no width meets the budget at the formula's r = {r:.4g} (resolution {resolution}) "
                          f"and d = {d:.4g}{where}: {err}") from None
    return dict(r=r, d=d, w=float(result.scalar), resolution=resolution, widths=result.widths,
                params=result.params, macs=result.macs, r_std=r_std, d_std=d_std, w_range=w_range,
                r_loo=formula.loo_errors()["r"], d_loo=formula.loo_errors()["d"],
                closed_form_w=float(TinyFormula.closed_form_w(c, r, d)), notes=notes)


def giant_cost(arch: Arch, phi: float,
               policy: str = DEFAULT_POLICY["giant"]) -> tuple[int, int, dict[str, int], int]:
    """(params, MACs, widths, resolution) of the compound-scaled network at φ. The paper's EfficientNet-B^-k
    is not φ = -k but the largest φ within B_MINUS_MACS[k] (`efficientnet_b_minus`)."""
    return CostPath(with_policy(arch, policy)).count(*giant_multipliers(phi))


def efficientnet_b_minus(k: int, arch: Arch | str | Path = "efficientnet_b0") -> TinyResult:
    """The TinyNet paper's EfficientNet-B^-k (k = 1..4): the giant method at B_MINUS_MACS[k].

    On the shipped efficientnet_b0 this gives 3.58M / 199M, 2.99M / 98M, 1.99M / 50M and 1.34M / 23M
    (params / MACs) against the paper's Table 3 3.6M / 201M, 3.0M / 98M, 2.0M / 51M, 1.3M / 24M.
    """
    if k not in B_MINUS_MACS:
        raise BudgetError(f"EfficientNet-B^-k is defined for k = 1..4 (the paper's Table 3), got {k}")
    return solve_tiny(arch, B_MINUS_MACS[k], method="giant")


def solve_tiny(arch: Arch | str | Path, macs: str | float | Budget | None = None, *,
               flops: str | float | Budget | None = None, method: str = "tiny",
               formula: TinyFormula | str | Path | None = None, policy: str | None = None,
               **params: float) -> TinyResult:
    """The network for a MACs (or FLOPs) budget by `method` (see the module doc).

    `arch` is an Arch or a name/path for `pyns.load` (with `params` as `--set` overrides). `formula` is a
    TinyFormula or a formula file (default: the shipped formula fitted on the released TinyNets); only the
    tiny method uses it. `policy=None` picks the method's policy (`DEFAULT_POLICY`). Raises BudgetError when
    the budget is below the smallest (or above the largest) network the method can build.
    """
    if method not in METHODS:
        raise BudgetError(f"unknown method `{method}`; choose one of {', '.join(METHODS)}")
    if not isinstance(arch, Arch):
        arch = load(arch, **params)
    elif params:
        raise PynsError("pass parameter overrides to pyns.load, not with an Arch")
    arch = with_policy(arch, policy or DEFAULT_POLICY[method])
    budget, text = resolve_macs_budget(arch, macs, flops)
    base = arch.count()
    formula_source = None
    if method == "tiny":
        if formula is None:
            formula = load_default_formula()
        elif not isinstance(formula, TinyFormula):
            formula = TinyFormula.load(formula)
        formula_source = formula.source
        found = _tiny(arch, budget, formula, base.macs)
    elif method == "giant":
        found = solve_giant(arch, budget)
    elif method == "r":
        found = solve_resolution_only(arch, budget)
    elif method == "d":
        found = solve_depth_only(arch, budget)
    else:
        found = solve_width_only(arch, budget)
    if found["macs"] > budget:  # every path above only returns fitting networks; a guard, not a branch
        raise PynsError(f"internal error: the {method} method returned {found['macs']:,} MACs over the "
                        f"budget of {budget:,.0f}")
    notes = found.pop("notes")
    return TinyResult(arch=arch.name, method=method, policy=arch.policy.name, budget_macs=budget,
                      budget_text=text, base_macs=base.macs, base_params=base.params,
                      base_resolution=arch.resolution, stages=stage_repeats(arch, found["d"]),
                      searchable=arch.searchable, formula_source=formula_source, notes=notes, **found)


# ---- resolved .arch ----------------------------------------------------------------------------------


def _bake_depth(arch: Arch, depth: float) -> str:
    """The arch's source with every repeat count replaced by its count at `depth` under the arch's policy,
    so the file elaborates to the same network at depth 1."""
    edits: dict[tuple[int, int], int] = {}
    for start, end, line, _base, scaled, _top in record_repeats(arch, depth):
        if edits.setdefault((start, end), scaled) != scaled:
            raise PynsError(f"cannot write the depth into the file: the repeat count on line {line} takes "
                            "different values in different places (it depends on a block parameter)")
    text = arch.source.text
    for (start, end), scaled in sorted(edits.items(), reverse=True):
        text = text[:start] + str(scaled) + text[end:]
    return text


def resolved_tiny_text(arch: Arch, result: TinyResult) -> str:
    """A self-contained .arch of `result`: repeat counts, input resolution and widths written in, so
    `pyns count FILE` (no multipliers) gives exactly result.params and result.macs."""
    arch = with_policy(arch, result.policy)
    baked = loads(_bake_depth(arch, result.d), filename=arch.source.filename, variant=arch.variant,
                  policy=arch.policy.name, **arch.params)
    cost = baked.count(result.widths, resolution=result.resolution)
    if (cost.params, cost.macs) != (result.params, result.macs):
        raise PynsError(f"internal error: the depth-resolved file counts {cost.params:,} params / "
                        f"{cost.macs:,} MACs, not {result.params:,} / {result.macs:,}")
    scale = ScaleResult(arch=baked.name, method=result.method, widths=dict(result.widths), params=result.params,
                        macs=result.macs, budget={"params": None, "macs": result.budget_macs}, metric="macs",
                        achieved=result.macs, gap_percent=100.0 * (result.macs - result.budget_macs)
                        / result.budget_macs, scalar=result.w, scalar_name="w", nearest=False, certified=True,
                        evaluations=0, resolution=result.resolution, depth=1.0)
    text = resolved_text(baked, scale, budget_text=f"MACs <= {result.budget_macs:,.0f} ({result.budget_text})")
    how = (f"# TinyNet (`pyns tiny`, method {result.method}, policy {result.policy}): r = {result.r:.6g}, "
           f"d = {result.d:.6g}, w = {result.w:.6g}" + (f", phi = {result.phi:.6g}" if result.phi is not None
                                                         else "")
           + f"; repeat counts ({', '.join(map(str, result.repeats))}), resolution {result.resolution} and "
           "widths are written in, so count it without multipliers.\n")
    return how + text


def write_resolved_tiny(path: str | Path, arch: Arch, result: TinyResult) -> str:
    """Write `resolved_tiny_text` atomically; returns the text."""
    text = resolved_tiny_text(arch, result)
    atomic_write_text(path, text)
    return text
