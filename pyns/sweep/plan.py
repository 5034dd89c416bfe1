"""Planning a sweep: its settings, its budgets and its cells, each with the widths its method gives.

Budgets follow the paper: the cost (params by default) of the default network scaled uniformly by each
width ratio. Every (method, budget, seed) is one `Cell`; `plan_cells` solves every method's widths before
any training, so a profile or budget that cannot work stops the sweep at once.

A profile that fell back to uniform scaling (too few trajectory points to fit) would make the
`neuralscale` cells train uniform widths under the neuralscale label, so it is refused unless
`allow_fallback` is set; every ScalingWarning of a solve (fallback, extrapolation, a profile fitted on
another architecture) is kept in the cell's `how["warnings"]` and returned by `plan_cells` for the user.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pyns.errors import ProfileError, PynsError
from pyns.neuralscale.baselines import morphnet_baseline, uniform_baseline
from pyns.scaling.profile import Profile, ScalingWarning
from pyns.scaling.solve import solve_budget
from pyns.train.run import ArchSpec, DataSpec

__all__ = ["METHODS", "FULL", "FALLBACK_NOTE", "SWEEP_KIND", "SweepConfig", "Cell", "parse_ratios", "sweep_budgets",
           "plan_cells", "sweep_warnings"]

METHODS = ("uniform", "morphnet", "neuralscale", "li")
# The table's footnote for neuralscale cells trained from a fallback profile (allow_fallback); it replaces
# the solver's own "falls back to uniform scaling" note, which says the same.
FALLBACK_NOTE = ("uniform fallback: the profile had too few recorded points ({points}) to fit power laws, so "
                 "these are uniformly scaled widths, not NeuralScale's")
FULL = "full"  # the trained default network that the li cells prune (not a method of its own)
SWEEP_KIND = "pyns-sweep"


# ----------------------------------------------------------------------------------------------------
# Sweep settings and cells
# ----------------------------------------------------------------------------------------------------


def parse_ratios(text: str) -> list[float]:
    """`0.25:2:0.25` (start:stop:step, stop included) or a comma list `0.25,0.75,2`."""
    text = text.strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step <= 0 or start <= 0 or stop < start:
                raise PynsError(f"--width-ratios {text}: need 0 < start <= stop and step > 0")
            count = int(math.floor((stop - start) / step + 1e-9)) + 1  # 1e-9: 0.25:2:0.25 includes 2
            ratios = [round(start + i * step, 10) for i in range(count)]  # round: 0.1*3 = 0.30000000000000004
        else:
            ratios = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise PynsError(f"--width-ratios: `{text}` is neither start:stop:step nor a comma list of numbers") from None
    if not ratios or any(not (r > 0 and math.isfinite(r)) for r in ratios):
        raise PynsError(f"--width-ratios: every ratio must be a positive number, got `{text}`")
    if len(set(ratios)) != len(ratios):
        raise PynsError(f"--width-ratios: `{text}` lists a ratio twice")
    return ratios


def sweep_budgets(arch, ratios: Sequence[float], metric: str = "params") -> dict[float, int]:
    """Budget per ratio: the cost of the default network scaled uniformly by the ratio (the paper's)."""
    if metric not in ("params", "macs"):
        raise PynsError(f"the budget metric must be params or macs, got {metric!r}")
    return {r: int(getattr(arch.count(arch.uniform_widths(r)), metric)) for r in ratios}


@dataclass
class SweepConfig:
    """Everything a sweep trains. `recipe` is a pyns.train.recipe.TrainRecipe (its seed is replaced per cell)."""

    arch: ArchSpec
    data: DataSpec
    recipe: Any
    ratios: list[float]
    methods: list[str]
    seeds: list[int]
    metric: str = "params"
    profile: str | None = None  # neuralscale: a profile.json (a descent run's final profile)
    trajectory: str | None = None  # morphnet: a trajectory.jsonl or a prune / descent run folder
    morphnet_fraction: float = 0.5
    li_epochs: int | None = None  # None: 40 (20 on TinyImageNet)
    li_lr: float = 0.001
    augment: bool | str | dict = True  # see pyns.data.augment_spec
    device: str | None = None  # None: the GPU where there is one
    latency: bool = True  # measure every cell's latency (the paper's way); False: Figure 5 stays empty
    # Train `neuralscale` cells from a profile that fell back to uniform scaling (they are then uniform
    # networks, marked as such in the table); by default such a profile is refused.
    allow_fallback: bool = False

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise PynsError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        if not self.methods:
            raise PynsError("give at least one method (--methods uniform,neuralscale)")
        if len(set(self.methods)) != len(self.methods):
            raise PynsError(f"--methods lists a method twice: {','.join(self.methods)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise PynsError(f"seeds must be distinct and at least one, got {self.seeds}")
        if "neuralscale" in self.methods and not self.profile:
            raise PynsError("the neuralscale method needs a profile: pass --descent RUN_DIR or --profile FILE")
        if "morphnet" in self.methods and not self.trajectory:
            raise PynsError("the morphnet method needs a pruning trajectory: pass --descent RUN_DIR (its "
                            "iter-00) or --trajectory PATH")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["recipe"] = dataclasses.asdict(self.recipe)
        return {"kind": SWEEP_KIND, **out}


@dataclass
class Cell:
    """One training of a sweep. For li, `widths` are the pruned widths; `source` is the full cell."""

    method: str
    ratio: float
    seed: int
    metric: str
    budget: int
    widths: dict[str, int]
    cost: dict[str, int]  # params and MACs the cost engine gives for the widths
    how: dict[str, Any] = field(default_factory=dict)  # how the widths were found (solver result, ...)
    source: str | None = None  # li: the folder name of the full network it prunes

    @property
    def name(self) -> str:
        return f"{self.method}_r{self.ratio:g}_seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _solve(arch, config: SweepConfig, method: str, budget: int, cache: dict[str, Any]) -> tuple[dict, dict]:
    """(widths, how) of a method at a budget."""
    kwargs = {config.metric: budget}
    if method == "uniform":
        result = uniform_baseline(arch, **kwargs)
        return result.widths, {"solve": result.to_dict()}
    if method == "neuralscale":
        if "profile" not in cache:
            cache["profile"] = Profile.load(config.profile)
        profile = cache["profile"]
        if profile.fallback and not config.allow_fallback:
            raise ProfileError(
                f"the profile {config.profile} falls back to {profile.fallback} scaling (only {profile.points} "
                "recorded trajectory points, too few to fit power laws), so its neuralscale cells would train "
                "uniform widths under the neuralscale label",
                hint="prune or descend with more recorded points (fewer units per step), or pass "
                     "--allow-fallback to train them anyway, marked as a uniform fallback in the table")
        result = solve_budget(arch, **kwargs, method="profile", profile=profile)
        how = {"solve": result.to_dict(), "profile": str(config.profile)}
        if profile.fallback:
            how["fallback"] = FALLBACK_NOTE.format(points=profile.points)
        return result.widths, how
    if method == "morphnet":
        result, point = morphnet_baseline(arch, config.trajectory, **kwargs, fraction=config.morphnet_fraction)
        return result.widths, {"solve": result.to_dict(), "morphnet_point": point.to_dict(),
                               "trajectory": str(config.trajectory)}
    if method == "li":
        trained = {s: arch.defaults[s] for s in arch.searchable}
        result = solve_budget(arch, **kwargs, method="from-config", config=trained)
        return result.widths, {"solve": result.to_dict(), "pruned_from": trained}
    raise PynsError(f"unknown method {method!r}")


def plan_cells(arch, config: SweepConfig) -> tuple[list[Cell], list[str]]:
    """Every cell of the sweep (full-network cells first when li is asked for) and notes on cells left out.

    Widths are solved here, before any training, so a profile or budget that cannot work stops the sweep
    at once. li cells exist only for budgets below the full network (pruning cannot grow a network).
    The solves' ScalingWarnings are in each cell's how["warnings"]; `sweep_warnings` lists them.
    """
    config.validate()
    budgets = sweep_budgets(arch, config.ratios, config.metric)
    full_cost = arch.count()
    cells: list[Cell] = []
    notes: list[str] = []
    cache: dict[str, Any] = {}
    solved: dict[tuple[str, float], tuple[dict, dict]] = {}
    for method in config.methods:
        for ratio in config.ratios:
            if method == "li" and budgets[ratio] >= getattr(full_cost, config.metric):
                notes.append(f"li at ratio {ratio:g}: the budget is not below the full network, nothing to prune")
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ScalingWarning)
                widths, how = _solve(arch, config, method, budgets[ratio], cache)
            how["warnings"] = sorted({str(w.message) for w in caught if issubclass(w.category, ScalingWarning)
                                      and not (how.get("fallback") and "falls back to uniform" in str(w.message))})
            if how.get("fallback"):
                how["warnings"].insert(0, how["fallback"])
            for w in caught:
                if not issubclass(w.category, ScalingWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            solved[(method, ratio)] = (widths, how)
    if "li" in config.methods and any(m == "li" for m, _ in solved):
        for seed in config.seeds:
            cells.append(Cell(FULL, 1.0, seed, config.metric, int(getattr(full_cost, config.metric)),
                              {s: arch.defaults[s] for s in arch.searchable},
                              {"params": full_cost.params, "macs": full_cost.macs},
                              {"note": "the trained default network that the li cells prune"}))
    for seed in config.seeds:
        for ratio in config.ratios:
            for method in config.methods:
                if (method, ratio) not in solved:
                    continue
                widths, how = solved[(method, ratio)]
                cost = arch.count(widths)
                source = f"{FULL}_r1_seed{seed}" if method == "li" else None
                cells.append(Cell(method, ratio, seed, config.metric, budgets[ratio],
                                  {s: int(widths[s]) for s in arch.searchable},
                                  {"params": cost.params, "macs": cost.macs}, how, source))
    return cells, notes


def sweep_warnings(cells: Sequence[Cell]) -> dict[tuple[str, float], list[str]]:
    """{(method, ratio): warnings} of the planned cells that have any (one entry per method and budget)."""
    out: dict[tuple[str, float], list[str]] = {}
    for cell in cells:
        notes = cell.how.get("warnings") or []
        if notes:
            out.setdefault((cell.method, float(cell.ratio)), list(notes))
    return out
