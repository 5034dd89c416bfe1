"""First-order Taylor importance per pruning unit, and the global ranking that picks units to remove.

A *unit* is one channel of a *group*: the searchable width symbols joined by identity adds
(pyns.ir.tied_groups). All layers of a group must lose the same channel indices, so a group's channel
importance is the sum, over every gate of every symbol in it, of the gate's mean importance
(TaylorGate.mean_importance: the squared minibatch dE/dz averaged over the minibatches since the last
reset). Ranking is global across groups with no per-layer normalisation (SPEC §5).

Summing per-gate squares is the paper's rule for tied layers; it is not (Σ dE/dz)² of one shared gate,
which the gates cannot provide because they accumulate squares per minibatch.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from pyns.errors import RunError

__all__ = ["Group", "Selection", "gates_by_symbol", "group_importance", "select_units"]

Group = tuple[str, ...]  # the symbols of one tied group, in the architecture's order


def gates_by_symbol(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Every TaylorGate of the model, by the width symbol it masks (the builder sets `.symbol`)."""
    from pyns.gate import TaylorGate

    out: dict[str, list[nn.Module]] = {}
    for module in model.modules():
        if isinstance(module, TaylorGate):
            out.setdefault(module.symbol, []).append(module)
    return out


def group_importance(model: nn.Module, groups: Sequence[Group],
                     kept: Mapping[str, Sequence[int]] | None = None) -> list[torch.Tensor]:
    """Importance of every unit of every group: float64 [width of the group] on the CPU, in group order.

    With `kept` (masked networks, which keep their full width), a group's vector is read at the original
    channel indices that are still alive, in their order; without it every channel of the gates counts
    (a physically shrunk network has only live channels).
    """
    gates = gates_by_symbol(model)
    out: list[torch.Tensor] = []
    for group in groups:
        total: torch.Tensor | None = None
        for symbol in group:
            for gate in gates.get(symbol, []):
                values = gate.mean_importance().detach().to("cpu", torch.float64)
                if kept is not None:
                    values = values[torch.as_tensor(list(kept[symbol]), dtype=torch.long)]
                if total is not None and total.shape != values.shape:
                    raise RunError(f"the gates of tied widths {', '.join(group)} have different channel "
                                   f"counts ({total.numel()} and {values.numel()}); tied widths must be equal")
                total = values.clone() if total is None else total + values
        if total is None:
            raise RunError(f"width {', '.join(group)} has no pruning gate, so its importance cannot be "
                           "measured; every searchable width must be produced by a conv/linear or follow a BN")
        out.append(total)
    return out


@dataclass
class Selection:
    """What one prune step removes: per group index, the positions (0-based, into the group's current
    channels, ascending) to delete. `blocked` says that a unit ranked among the lowest could not be taken
    because its group was already at the minimum width."""

    removed: dict[int, list[int]] = field(default_factory=dict)
    blocked: bool = False

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.removed.values())


def select_units(importances: Sequence[torch.Tensor], count: int,
                 min_width: int | Sequence[int] = 1) -> Selection:
    """The `count` least important units over all groups, never taking a group below `min_width`
    (one bound for every group, or one per group: a symbol's `[min = N]` from the DSL).

    Units are ranked by importance ascending; equal importances (e.g. dead channels at exactly 0) are
    broken by group order, then channel position, so the choice is deterministic. A unit whose group has
    reached `min_width` is skipped and `blocked` is set; the caller decides whether that ends the run.
    """
    floors = [min_width] * len(importances) if isinstance(min_width, int) else list(min_width)
    if count < 0 or len(floors) != len(importances) or min(floors, default=1) < 1:
        raise ValueError(f"need count >= 0 and one min_width >= 1 per group, got {count} and {min_width}")
    if not importances:
        return Selection()
    values = torch.cat([imp.to(torch.float64).reshape(-1) for imp in importances])
    group_of = torch.cat([torch.full((imp.numel(),), g, dtype=torch.long) for g, imp in enumerate(importances)])
    position = torch.cat([torch.arange(imp.numel()) for imp in importances])
    # A stable sort keeps the concatenation order (group, then position) among equal importances.
    order = torch.sort(values, stable=True).indices.tolist()
    remaining = [imp.numel() for imp in importances]
    selection = Selection()
    for unit in order:
        if selection.count >= count:
            break
        group = int(group_of[unit])
        if remaining[group] <= floors[group]:
            selection.blocked = True
            continue
        remaining[group] -= 1
        selection.removed.setdefault(group, []).append(int(position[unit]))
    for positions in selection.removed.values():
        positions.sort()
    return selection
