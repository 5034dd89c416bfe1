"""First-order Taylor importance per channel, and the global ranking that picks units to remove.

Channels are grouped by channel space (pyns.channels): a *class* is the set of spaces joined by identity
adds, whose channels are removed together (a ResNet's stem, b1b and b2b), and a derived space (an
expansion `6 * in`, a squeeze-excite's reduced width) is a class of its own. One channel of a class
passes through several gates: one after every BN or producer of each of its spaces. With g_k the
minibatch dE/dz of gate k (E the batch-mean loss), two rules score the channel; for a class with one
gate both are the paper's (dE/dz)^2 exactly (eq. 4), averaged over the Q minibatches since the last prune:

- "per-gate" (the default): mean over minibatches of sum over the class's gates of g_k^2 — each gate's
  own Taylor score, summed;
- "summed": mean over minibatches of (sum over gates of g_k)^2 — the first-order estimate of removing
  the channel at every gate at once, squared.

The paper has no tied layers, so neither is a rule it states. The default is the one that ranked closer
to the true loss change in `benchmarks/bench_importance.py` (ResNet18 at width 1/8 trained on digits,
Q = 8, three seeds: Spearman correlation with the oracle (E - E|channel removed)^2 of 0.74-0.79 for
per-gate against 0.64-0.67 for summed; 6-7 against 3-5 of the oracle's 10 least important tied channels
found). `TaylorCollector` forms either: every gate adds into its class's slot of one flat buffer during
the backward pass (g^2 by the fused kernel for per-gate, g for summed), with no device synchronisation.

Classes holding a searchable symbol are the *units* of the global ranking (`select_units`, no per-layer
normalisation, SPEC §5); derived classes only choose which of their own channels survive.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pyns.errors import RunError
from pyns.gate import TaylorGate

__all__ = ["RULES", "Group", "Selection", "TaylorCollector", "gates_by_symbol", "select_units"]

Group = tuple[str, ...]  # the channel spaces of one class, in the architecture's order
RULES = ("per-gate", "summed")  # how the gates of one class combine; the first is the default


def gates_by_symbol(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Every TaylorGate of the model, by the channel space it masks (the builder sets `.symbol`: a
    searchable symbol's name or a derived space's id)."""

    out: dict[str, list[nn.Module]] = {}
    for module in model.modules():
        if isinstance(module, TaylorGate):
            out.setdefault(module.symbol, []).append(module)
    return out


class TaylorCollector:
    """Per class of channel spaces, the importance sums of one of the `RULES` over the minibatches.

    Attaching points every gate of the classes at its class's view of one flat float64 buffer (per-gate:
    `gate.taylor_squares`, which the fused backward adds g^2 into; summed: `gate.taylor_sum`, which it
    adds g into, squared at `end_minibatch`). Call `end_minibatch()` after every backward pass,
    `detach()` before dropping the model.
    """

    def __init__(self, model: nn.Module, classes: Sequence[Group], rule: str = RULES[0]):
        if rule not in RULES:
            raise RunError(f"the importance rule must be one of {', '.join(RULES)}, got {rule!r}")
        gates = gates_by_symbol(model)
        self.rule = rule
        self.classes = [tuple(c) for c in classes]
        widths: list[int] = []
        members: list[list[nn.Module]] = []
        for group in self.classes:
            found = [gate for space in group for gate in gates.get(space, [])]
            if not found:
                raise RunError(f"width {', '.join(group)} has no pruning gate, so its importance cannot be "
                               "measured; every searchable width must be produced by a conv/linear or follow a BN")
            sizes = {gate.num_channels for gate in found}
            if len(sizes) != 1:
                raise RunError(f"the gates of tied widths {', '.join(group)} have different channel counts "
                               f"({', '.join(map(str, sorted(sizes)))}); tied widths must be equal")
            widths.append(sizes.pop())
            members.append(found)
        device = next(iter(gates.values()))[0].z.device if gates else torch.device("cpu")
        self.offsets = [sum(widths[:i]) for i in range(len(widths) + 1)]
        total = self.offsets[-1]
        self.gradient = torch.zeros(total, dtype=torch.float64, device=device)  # summed: this minibatch's g
        self.squares = torch.zeros(total, dtype=torch.float64, device=device)  # sums of squares
        self.batches = 0
        self._gates = [gate for found in members for gate in found]
        for index, found in enumerate(members):
            target = self.squares if rule == "per-gate" else self.gradient
            view = target[self.offsets[index]:self.offsets[index + 1]]
            for gate in found:
                if rule == "per-gate":
                    gate.taylor_squares = view
                else:
                    gate.taylor_sum = view

    def end_minibatch(self) -> None:
        if self.rule == "summed":
            self.squares.addcmul_(self.gradient, self.gradient)
            self.gradient.zero_()
        self.batches += 1

    def importance(self, index: int) -> torch.Tensor:
        """Mean importance of the channels of class `index` (float64 [width] on the CPU; zeros before the
        first minibatch)."""
        values = self.squares[self.offsets[index]:self.offsets[index + 1]]
        return (values / max(self.batches, 1)).cpu()

    def detach(self) -> None:
        for gate in self._gates:
            gate.taylor_sum = gate.taylor_squares = None

    def state_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "squares": self.squares.cpu(), "batches": self.batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["rule"] != self.rule or state["squares"].shape != self.squares.shape:
            raise RunError("the checkpoint's importance sums do not fit the network's gates")
        self.squares.copy_(state["squares"])
        self.gradient.zero_()
        self.batches = int(state["batches"])


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
