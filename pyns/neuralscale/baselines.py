"""The paper's baselines (SPEC §5): uniform scaling, "MorphNet (Taylor-FO)" and Li et al. L1-norm pruning.

- **uniform**: every searchable width times one multiplier, the largest that fits the budget (the budget
  solver's `uniform` family).
- **morphnet** (Taylor-FO): take the width configuration at the point of a pruning trajectory where 50% of
  the units remain, then scale that configuration uniformly to the budget (the solver's `from-config`
  family). The trajectory is a descent run's `iter-00/trajectory.jsonl` (its first pruning, from the
  default network) or any `pyns prune` run.
- **li** (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017): rank the filters of a *trained*
  network by the L1 norm of their weights, remove the lowest-ranked ones until the budget is met, then
  fine-tune (40 epochs at lr 0.001; 20 on TinyImageNet). How many filters each width loses follows the
  trained configuration scaled uniformly to the budget (`from-config`), so every layer keeps the same
  fraction; which filters go is decided by L1 norm. Widths joined by an identity add (a tied group) share
  their channels, so they are ranked together by the sum of their producers' L1 norms and keep the same
  channels. The network is physically shrunk (pyns.neuralscale.prune.shrink) with the kept filters' weights.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyns import ir
from pyns.dsl.expr import Sym
from pyns.data.names import canonical_name
from pyns.errors import BudgetError, RunError
from pyns.scaling.solve import ScaleResult, solve_budget

__all__ = [
    "MORPHNET_FRACTION",
    "LI_FINETUNE_EPOCHS",
    "LI_FINETUNE_EPOCHS_TINYIMAGENET",
    "LI_FINETUNE_LR",
    "uniform_baseline",
    "MorphNetPoint",
    "read_trajectory_source",
    "morphnet_point",
    "morphnet_baseline",
    "l1_filter_norms",
    "li_keep_sets",
    "LiResult",
    "li_prune",
    "li_finetune_recipe",
]

# SPEC §5: "prune until 50% of units remain, then scale that configuration uniformly".
MORPHNET_FRACTION = 0.5
# SPEC §5 / Li et al.: fine-tune the pruned network 40 epochs (20 on TinyImageNet) at lr 0.001.
LI_FINETUNE_EPOCHS = 40
LI_FINETUNE_EPOCHS_TINYIMAGENET = 20
LI_FINETUNE_LR = 0.001


# ----------------------------------------------------------------------------------------------------
# Uniform
# ----------------------------------------------------------------------------------------------------


def uniform_baseline(arch, params=None, macs=None, *, depth: float = 1.0,
                     resolution: int | None = None) -> ScaleResult:
    """The uniformly scaled network with the largest multiplier whose cost fits the budget."""
    # The uniform baseline is a pure multiplier (the family solution), not filled channel by channel.
    return solve_budget(arch, params, macs, method="uniform", depth=depth, resolution=resolution, fill=False)


# ----------------------------------------------------------------------------------------------------
# MorphNet (Taylor-FO)
# ----------------------------------------------------------------------------------------------------


@dataclass
class MorphNetPoint:
    """The trajectory row where the remaining units first reach `fraction` of the start."""

    widths: dict[str, int]  # searchable widths at that row
    step: int  # the row's prune step
    units: int  # units remaining at that row
    total_units: int  # units of the start network
    fraction: float  # the fraction asked for

    @property
    def remaining(self) -> float:
        return self.units / self.total_units

    def to_dict(self) -> dict[str, Any]:
        return {"widths": dict(self.widths), "step": self.step, "units": self.units,
                "total_units": self.total_units, "fraction": self.fraction, "remaining": self.remaining}


def read_trajectory_source(source: str | Path) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
    """Rows of a pruning trajectory and, when recorded beside it, the widths it started from.

    `source` is a `trajectory.jsonl` file or a folder holding one (a `pyns prune` run, a descent run's
    `iter-XX/`, or a descent run folder, whose `iter-00/` is used). The start widths come from the
    folder's config.json (`start_widths`) when there is one.
    """
    from pyns.runfiles import load_config, read_jsonl

    path = Path(source)
    if path.is_dir() and not (path / "trajectory.jsonl").exists() and (path / "iter-00" / "trajectory.jsonl").exists():
        path = path / "iter-00"
    file = path / "trajectory.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise RunError(f"no pruning trajectory at {source}: expected a trajectory.jsonl file, or a prune or "
                       "descent run folder holding one")
    rows = read_jsonl(file)
    config = load_config(file.parent, "config.json") if (file.parent / "config.json").exists() else None
    start = config.get("start_widths") if isinstance(config, dict) else None
    return rows, ({k: int(v) for k, v in start.items()} if isinstance(start, dict) else None)


def _units(arch, widths: Mapping[str, int], groups: Sequence[Sequence[str]]) -> int:
    """Units of a configuration: one per channel of every tied group (tied widths prune as one)."""
    full = arch.widths(widths)
    return sum(int(full[group[0]]) for group in groups)


def morphnet_point(arch, rows: Sequence[Mapping[str, Any]], *, start_widths: Mapping[str, int] | None = None,
                   fraction: float = MORPHNET_FRACTION) -> MorphNetPoint:
    """The configuration of the first row at which at most `fraction` of the start network's units remain.

    Units are channels of searchable widths, a tied group counting once (as the pruner counts them).
    A row's own `units` field is used when present; otherwise it is computed from its widths. The start
    network defaults to the arch's default widths.
    """
    if not 0 < fraction < 1:
        raise RunError(f"the MorphNet fraction of remaining units must be in (0, 1), got {fraction}")
    if not rows:
        raise RunError("the pruning trajectory has no rows")
    start = arch.widths(start_widths)
    groups = [list(g) for g in ir.tied_groups(arch.network, start)]
    total = _units(arch, start, groups)
    searchable = arch.searchable
    for row in rows:
        widths = row.get("widths")
        if not isinstance(widths, Mapping):
            raise RunError(f"trajectory row {row.get('step', '?')} has no widths")
        units = int(row["units"]) if "units" in row else _units(arch, widths, groups)
        if units <= fraction * total:
            missing = [s for s in searchable if s not in widths]
            if missing:
                raise RunError(f"trajectory row {row.get('step', '?')} lacks widths for {', '.join(missing)}")
            return MorphNetPoint({s: int(widths[s]) for s in searchable}, int(row.get("step", 0)), units, total,
                                 fraction)
    last = rows[-1]
    units = int(last["units"]) if "units" in last else _units(arch, last["widths"], groups)
    raise RunError(f"the pruning trajectory ends with {100 * units / total:.1f}% of the units remaining and "
                   f"never reaches {100 * fraction:g}%; prune further (a larger stop fraction or more epochs)")


def morphnet_baseline(arch, trajectory: str | Path | Sequence[Mapping[str, Any]], params=None, macs=None, *,
                      start_widths: Mapping[str, int] | None = None, fraction: float = MORPHNET_FRACTION,
                      depth: float = 1.0, resolution: int | None = None) -> tuple[ScaleResult, MorphNetPoint]:
    """The MorphNet (Taylor-FO) configuration taken at `fraction` of the units, scaled to the budget."""
    if isinstance(trajectory, (str, Path)):
        rows, recorded_start = read_trajectory_source(trajectory)
        start_widths = start_widths if start_widths is not None else recorded_start
    else:
        rows = list(trajectory)
    point = morphnet_point(arch, rows, start_widths=start_widths, fraction=fraction)
    result = solve_budget(arch, params, macs, method="from-config", config=point.widths, depth=depth,
                          resolution=resolution)
    return result, point


# ----------------------------------------------------------------------------------------------------
# Li et al. L1-norm filter pruning
# ----------------------------------------------------------------------------------------------------


def _producers(nodes: Sequence[Any], symbol_of: dict[str, str]) -> None:
    """Map every conv / linear layer whose output width is a bare symbol to that symbol."""
    for node in nodes:
        if isinstance(node, ir.Residual):
            _producers(node.body, symbol_of)
            _producers(node.shortcut, symbol_of)
        elif isinstance(node, ir.Conv) and isinstance(node.out_ch, Sym):
            symbol_of[node.name] = node.out_ch.name
        elif isinstance(node, ir.Linear) and isinstance(node.out_features, Sym):
            symbol_of[node.name] = node.out_features.name


def l1_filter_norms(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per searchable symbol, the L1 norm of each output filter, summed over every layer producing it.

    A filter's L1 norm is the sum of the absolute values of its weights (Li et al. eq. 1: sum over input
    channels and kernel positions). `model` is a pyns-built network (it carries its IR and widths).
    """
    searchable = {s.name for s in model.ir.searchable}
    symbol_of: dict[str, str] = {}
    _producers(model.ir.layers, symbol_of)
    norms: dict[str, torch.Tensor] = {}
    for module in model.modules():
        node = getattr(module, "pyns_layer", None)
        symbol = symbol_of.get(getattr(node, "name", None))
        if symbol is None or symbol not in searchable:
            continue
        weight = module.weight.detach().float()
        per_filter = weight.abs().reshape(weight.shape[0], -1).sum(dim=1).cpu()  # [out, in, kh, kw] -> [out]
        norms[symbol] = norms[symbol] + per_filter if symbol in norms else per_filter
    missing = sorted(searchable - set(norms))
    if missing:
        raise RunError(f"no conv or linear layer produces width(s) {', '.join(missing)}, so their filters "
                       "cannot be ranked by L1 norm")
    return norms


def li_keep_sets(model: nn.Module, widths: Mapping[str, int]) -> dict[str, list[int]]:
    """For each searchable symbol, the sorted indices of its `widths[symbol]` filters with the largest L1
    norms (ties: the lower index stays). Tied symbols are ranked by their summed norms and keep the same
    channels; they must be given the same width."""
    norms = l1_filter_norms(model)
    keep: dict[str, list[int]] = {}
    for group in ir.tied_groups(model.ir, model.widths):
        targets = {int(widths[s]) for s in group}
        if len(targets) != 1:
            raise BudgetError(f"widths {', '.join(group)} are joined by an identity add and must stay equal, "
                              f"got {', '.join(str(widths[s]) for s in group)}")
        target = targets.pop()
        current = int(model.widths[group[0]])
        if not 1 <= target <= current:
            raise BudgetError(f"cannot prune `{group[0]}` from {current} to {target} filters: L1 pruning only "
                              "removes filters, so the target must be between 1 and the trained width")
        score = sum(norms[s] for s in group)
        # Stable descending sort: equal norms keep their original order, so the lower index wins a tie.
        order = torch.sort(score, descending=True, stable=True).indices[:target]
        kept = sorted(int(i) for i in order)
        for symbol in group:
            keep[symbol] = kept
    return keep


@dataclass
class LiResult:
    """A pruned network and how it was chosen."""

    model: nn.Module
    widths: dict[str, int]
    keep: dict[str, list[int]]  # per searchable symbol: indices of the trained network's filters kept
    scale: ScaleResult  # the budget solve that fixed how many filters each width keeps
    dropped_layers: list[str] = field(default_factory=list)  # shortcuts no longer built (widths became equal)


def li_prune(model: nn.Module, arch, params=None, macs=None, *, depth: float = 1.0,
             resolution: int | None = None) -> LiResult:
    """Prune a trained pyns network to a budget by L1 filter norm and shrink it physically.

    The number of filters per width is the trained configuration scaled uniformly to the budget (the
    solver's `from-config` family), so the result meets the budget exactly as the other baselines do.
    `model` is left unchanged; the returned network is new, holding the kept filters' trained weights.
    """
    from pyns.neuralscale.prune.shrink import shrink_network

    trained = {s: int(model.widths[s]) for s in arch.searchable}
    full_cost = arch.count(model.widths, depth=depth, resolution=resolution)
    scale = solve_budget(arch, params, macs, method="from-config", config=trained, depth=depth,
                         resolution=resolution)
    grown = [s for s in arch.searchable if scale.widths[s] > trained[s]]
    if grown:
        raise BudgetError(f"the budget ({_budget_text(scale)}) is at least the trained network's cost "
                          f"(params {full_cost.params:,}, MACs {full_cost.macs:,}): L1 pruning cannot make it "
                          "larger; choose a smaller budget")
    keep = li_keep_sets(model, scale.widths)
    positions = {s: idx for s, idx in keep.items() if len(idx) != trained[s]}
    if positions:
        pruned, _, report = shrink_network(model, positions)
        dropped = list(report.dropped)
    else:
        pruned, dropped = copy.deepcopy(model), []
    return LiResult(pruned, {s: len(keep[s]) for s in arch.searchable}, keep, scale, dropped)


def _budget_text(scale: ScaleResult) -> str:
    parts = [f"{k} <= {v:,.0f}" for k, v in scale.budget.items() if v is not None]
    return " and ".join(parts)


def li_finetune_recipe(recipe, dataset: str, *, epochs: int | None = None, lr: float = LI_FINETUNE_LR):
    """The fine-tuning recipe of Li et al.: `recipe`'s SGD settings at a constant `lr` (0.001) for 40
    epochs (20 on TinyImageNet) unless `epochs` says otherwise."""
    if epochs is None:
        key = canonical_name(dataset)
        epochs = LI_FINETUNE_EPOCHS_TINYIMAGENET if key == "tinyimagenet" else LI_FINETUNE_EPOCHS
    return recipe.replace(lr=lr, epochs=int(epochs), milestones=())
