"""The paper's baselines (SPEC §5): uniform scaling, "MorphNet (Taylor-FO)" and Li et al. L1-norm pruning.

- **uniform**: every searchable width times one multiplier, the largest that fits the budget (the budget
  solver's `uniform` family).
- **morphnet** (Taylor-FO): take the width configuration at the point of a pruning trajectory where 50% of
  the filters remain (filters as the pruner counts them: pyns.channels.count_filters), then scale that
  configuration uniformly to the budget (the solver's `from-config` family). The trajectory is a descent
  run's `iter-00/trajectory.jsonl` (its first pruning, from the default network) or any `pyns prune` run.
- **li** (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017): rank the filters of a *trained*
  network by the L1 norm of their weights, remove the lowest-ranked ones until the budget is met, then
  fine-tune (40 epochs at lr 0.001; 20 on TinyImageNet). How many filters each width loses follows the
  trained configuration scaled uniformly to the budget (`from-config`), so every layer keeps the same
  fraction; which filters go is decided by L1 norm. Widths joined by an identity add (a tied group) share
  their channels, so they are ranked together by the sum of their producers' L1 norms and keep the same
  channels. A width derived from the searchable ones (MobileNetV2's expansion `6 * in`, EfficientNet's
  SE reduced width) follows the new widths and keeps its own filters with the largest L1 norms. The
  network is physically shrunk (pyns.neuralscale.prune.shrink) with the kept filters' weights.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyns.channels import channel_map, count_filters, pin_shortcuts
from pyns.data.names import canonical_name
from pyns.dsl.expr import evaluate
from pyns.errors import BudgetError, RunError
from pyns.neuralscale.profile import read_trajectory
from pyns.neuralscale.prune.keep import derived_keep, top_positions
from pyns.neuralscale.prune.shrink import ApproximateShrinkWarning, shrink_network
from pyns.runfiles import load_config
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

# SPEC §5: "prune until 50% of units remain, then scale that configuration uniformly"; units are filters.
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
    """The trajectory row where the remaining filters first reach `fraction` of the start."""

    widths: dict[str, int]  # searchable widths at that row
    step: int  # the row's prune step
    filters: int  # filters remaining at that row (pyns.channels.count_filters)
    total_filters: int  # filters of the start network
    fraction: float  # the fraction asked for

    @property
    def remaining(self) -> float:
        return self.filters / self.total_filters

    def to_dict(self) -> dict[str, Any]:
        return {"widths": dict(self.widths), "step": self.step, "filters": self.filters,
                "total_filters": self.total_filters, "fraction": self.fraction, "remaining": self.remaining}


def read_trajectory_source(source: str | Path) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
    """Rows of a pruning trajectory and, when recorded beside it, the widths it started from.

    `source` is a `trajectory.jsonl` file or a folder holding one (a `pyns prune` run, a descent run's
    `iter-XX/`, or a descent run folder, whose `iter-00/` is used). The start widths come from the
    folder's config.json (`start_widths`) when there is one.
    """

    path = Path(source)
    if path.is_dir() and not (path / "trajectory.jsonl").exists() and (path / "iter-00" / "trajectory.jsonl").exists():
        path = path / "iter-00"
    file = path / "trajectory.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise RunError(f"no pruning trajectory at {source}: expected a trajectory.jsonl file, or a prune or "
                       "descent run folder holding one")
    rows = read_trajectory(file)
    config = load_config(file.parent, "config.json") if (file.parent / "config.json").exists() else None
    start = config.get("start_widths") if isinstance(config, dict) else None
    return rows, ({k: int(v) for k, v in start.items()} if isinstance(start, dict) else None)


def morphnet_point(arch, rows: Sequence[Mapping[str, Any]], *, start_widths: Mapping[str, int] | None = None,
                   fraction: float = MORPHNET_FRACTION) -> MorphNetPoint:
    """The configuration of the first row at which at most `fraction` of the start network's filters remain.

    Filters are counted as the pruner counts them (pyns.channels.count_filters on the network with its
    shortcuts pinned at the start widths: every layer producing a searchable width counts its output
    channels). A row's own `filters` field is used when present; otherwise it is computed from its widths
    (rows of older runs carry `units`, channels of tied groups, which is not this count and is ignored).
    The start network defaults to the arch's default widths.
    """
    if not 0 < fraction < 1:
        raise RunError(f"the MorphNet fraction of remaining filters must be in (0, 1), got {fraction}")
    if not rows:
        raise RunError("the pruning trajectory has no rows")
    start = arch.widths(start_widths)
    cmap = channel_map(pin_shortcuts(arch.network, start), start)
    total = count_filters(cmap, start)
    searchable = arch.searchable

    def filters_of(row: Mapping[str, Any]) -> int:
        widths = row.get("widths")
        if not isinstance(widths, Mapping):
            raise RunError(f"trajectory row {row.get('step', '?')} has no widths")
        return int(row["filters"]) if "filters" in row else count_filters(cmap, arch.widths(widths))

    for row in rows:
        filters = filters_of(row)
        if filters <= fraction * total:
            widths = row["widths"]
            missing = [s for s in searchable if s not in widths]
            if missing:
                raise RunError(f"trajectory row {row.get('step', '?')} lacks widths for {', '.join(missing)}")
            return MorphNetPoint({s: int(widths[s]) for s in searchable}, int(row.get("step", 0)), filters, total,
                                 fraction)
    filters = filters_of(rows[-1])
    raise RunError(f"the pruning trajectory ends with {100 * filters / total:.1f}% of the filters remaining and "
                   f"never reaches {100 * fraction:g}%; prune further (a larger stop fraction or more epochs)")


def morphnet_baseline(arch, trajectory: str | Path | Sequence[Mapping[str, Any]], params=None, macs=None, *,
                      start_widths: Mapping[str, int] | None = None, fraction: float = MORPHNET_FRACTION,
                      depth: float = 1.0, resolution: int | None = None) -> tuple[ScaleResult, MorphNetPoint]:
    """The MorphNet (Taylor-FO) configuration taken at `fraction` of the filters, scaled to the budget."""
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


def l1_filter_norms(model: nn.Module) -> dict[str, torch.Tensor]:
    """Per channel space (searchable symbol, or derived width: pyns.channels), the L1 norm of each output
    filter, summed over every layer producing it.

    A filter's L1 norm is the sum of the absolute values of its weights (Li et al. eq. 1: sum over input
    channels and kernel positions). The filters of a space are the conv / linear layers whose output it is
    (depthwise convs and projection shortcuts included); a squeeze-excite's reduced width has the filters
    of its reducing 1x1 conv. `model` is a pyns-built network (it carries its IR and widths).
    """
    cmap = channel_map(model.ir, model.widths)
    modules = {m.pyns_layer.name: m for m in model.modules() if getattr(m, "pyns_layer", None) is not None}
    norms: dict[str, torch.Tensor] = {}
    for space_id, space in cmap.spaces.items():
        weights = [modules[name].weight for name in space.layers if name in modules]
        if space.se_reduce is not None and space.se_reduce in modules:
            weights.append(modules[space.se_reduce].conv_reduce.weight)
        for weight in weights:
            weight = weight.detach().float()
            per_filter = weight.abs().reshape(weight.shape[0], -1).sum(dim=1).cpu()  # [out, in, kh, kw] -> [out]
            norms[space_id] = norms[space_id] + per_filter if space_id in norms else per_filter
    # A layer writing several spaces side by side (`conv(a + e)`, a depthwise conv on a concat's output):
    # each space's filters at its offset.
    for cid, names in cmap.composite_layers.items():
        for name in (n for n in names if n in modules):
            weight = modules[name].weight.detach().float()
            per_filter, offset = weight.abs().reshape(weight.shape[0], -1).sum(dim=1).cpu(), 0
            for sid, width in cmap.composites[cid]:
                size = int(evaluate(width, model.widths))
                if sid is not None:
                    part = per_filter[offset:offset + size]
                    norms[sid] = norms[sid] + part if sid in norms else part
                offset += size
    missing = sorted(s.name for s in model.ir.searchable if s.name not in norms)
    if missing:
        raise RunError(f"no conv or linear layer produces width(s) {', '.join(missing)}, so their filters "
                       "cannot be ranked by L1 norm")
    return norms


def li_keep_sets(model: nn.Module, widths: Mapping[str, int]) -> dict[str, list[int]]:
    """For each searchable symbol, the sorted indices of its `widths[symbol]` filters with the largest L1
    norms (ties: the lower index stays); for each derived width that the new widths change, likewise its
    own filters with the largest L1 norms. Tied symbols are ranked by their summed norms and keep the same
    channels; they must be given the same width."""

    norms = l1_filter_norms(model)
    cmap = channel_map(model.ir, model.widths)
    keep: dict[str, list[int]] = {}
    for group in cmap.symbol_classes():
        symbols = [s for s in group if cmap.spaces[s].symbol is not None]
        targets = {int(widths[s]) for s in symbols}
        if len(targets) != 1:
            raise BudgetError(f"widths {', '.join(symbols)} are joined by an identity add and must stay equal, "
                              f"got {', '.join(str(widths[s]) for s in symbols)}")
        target = targets.pop()
        current = int(model.widths[symbols[0]])
        if not 1 <= target <= current:
            raise BudgetError(f"cannot prune `{symbols[0]}` from {current} to {target} filters: L1 pruning only "
                              "removes filters, so the target must be between 1 and the trained width")
        blocks = cmap.class_blocks(group)  # a per-group width keeps `target` filters in each group
        kept = top_positions(sum(norms[s] for s in group if s in norms), target * blocks, blocks)
        for space in group:
            keep[space] = kept
    return derived_keep(model, keep, norms, cmap)


@dataclass
class LiResult:
    """A pruned network and how it was chosen."""

    model: nn.Module
    widths: dict[str, int]
    keep: dict[str, list[int]]  # per searchable symbol: indices of the trained network's filters kept
    scale: ScaleResult  # the budget solve that fixed how many filters each width keeps
    dropped_layers: list[str] = field(default_factory=list)  # shortcuts no longer built (widths became equal)
    approximate_layers: list[str] = field(default_factory=list)  # not carried over exactly (ShrinkReport)


def li_prune(model: nn.Module, arch, params=None, macs=None, *, depth: float = 1.0,
             resolution: int | None = None) -> LiResult:
    """Prune a trained pyns network to a budget by L1 filter norm and shrink it physically.

    The number of filters per width is the trained configuration scaled uniformly to the budget (the
    solver's `from-config` family), so the result meets the budget exactly as the other baselines do.
    `model` is left unchanged; the returned network is new, holding the kept filters' trained weights.
    `model` may also be the torch module `arch` was imported from (a pretrained torchvision or timm
    network): its weights are copied into the pyns network first (`arch.build(weights=model)`).
    """

    if not hasattr(model, "widths") and depth == 1.0 and resolution is None:
        model = arch.build(weights=model)  # not a pyns-built network: rank the real weights it holds

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
    pruned, _, report = shrink_network(model, keep)
    if report.approximate:
        warnings.warn(f"Li et al. pruning: {report.describe()}", ApproximateShrinkWarning, stacklevel=2)
    widths = {s: int(scale.widths[s]) for s in arch.searchable}
    return LiResult(pruned, widths, {s: keep[s] for s in arch.searchable}, scale, list(report.dropped),
                    list(report.approximate))


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
