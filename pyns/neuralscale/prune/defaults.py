"""Pruning settings derived from the network and the data set, and what a run will record, known before it starts.

The paper's Algorithm 1 removes 10 units every Q = 50 minibatches: numbers chosen for VGG11 on CIFAR-10
(2,752 prunable units, 196 minibatches per epoch). On a 128-unit network they stop after ~12 prune steps
and record ~5 trajectory points, fewer than the 6 a power-law fit needs, and the profile silently falls
back to uniform scaling. So when a PruneConfig leaves them unset (None), `plan_schedule` derives them:

- units per step: 1% of the network's prunable units (its tied groups' channels at the start), at least 1
  and at most the paper's 10. A run then takes ~95 prune steps to its 95% stop on every network; the
  paper's 10 holds from 1,000 units up (VGG11, ResNet18, MobileNetV2 on CIFAR). Counted from the Arch's
  IR, so imported networks get the same rule as shipped ones.
- Q: the paper's 50 minibatches, or one epoch when an epoch has fewer (scikit-learn's digits: 6 batches
  of 256), so that a step never waits for many passes over a small data set.

`plan_schedule` also bounds what the run can record: recording starts only once every searchable width
has lost a unit, so at most `steps - ceil(groups / units) + 1` of its prune steps are recorded. When that
bound is below the fit's minimum the run is certain to give a uniform fallback profile, and when the run
has fewer prune steps than `TARGET_POINTS` it is likely to (recording usually starts a third to a half
of the way in: 52 of 105 steps for digits_cnn with one unit per step). Either way a ScheduleWarning is
issued before any training.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pyns import ir
from pyns.neuralscale.profile import MIN_POINTS
from pyns.neuralscale.prune.floors import unit_floors
from pyns.neuralscale.prune.schedule import PruneConfig, target_units
from pyns.scaling.profile import ScalingWarning

__all__ = ["PAPER_PRUNE_EVERY", "PAPER_UNITS_PER_STEP", "UNIT_FRACTION", "TARGET_POINTS", "ScheduleWarning",
           "SchedulePlan", "plan_schedule", "prunable_units"]

PAPER_UNITS_PER_STEP = 10  # NeuralScale's units per prune step (VGG11, CIFAR-10)
PAPER_PRUNE_EVERY = 50  # NeuralScale's Q, minibatches per prune step (CIFAR; TinyImageNet: 100)
UNIT_FRACTION = 0.01  # derived units per step: 1% of the prunable units -> ~95 steps to the 95% stop
TARGET_POINTS = 30  # the recorded points the derived defaults aim at; fewer prune steps than this warn


class ScheduleWarning(ScalingWarning):
    """A pruning run is set up so that its profile will (or will likely) fall back to uniform scaling."""


@dataclass
class SchedulePlan:
    """The settings a run uses, where the derived ones came from, and what it can record."""

    config: PruneConfig  # every field a number: what the loop runs and config.json records
    derived: dict[str, str]  # field -> why it has its value (only the fields the user left unset)
    total_units: int  # prunable units at the start (channels of the tied groups)
    groups: int  # tied groups that can lose a unit
    minibatches_per_epoch: int
    max_steps: int  # prune steps until the stop fraction (or every floor, or the epoch cap) is reached
    max_points: int  # upper bound on the trajectory rows recorded (see the module doc)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The effective schedule in a few lines, for the start of a run."""
        c = self.config
        units = f"{c.units_per_step} unit(s) per prune step"
        units += f" ({self.derived['units_per_step']})" if "units_per_step" in self.derived else ""
        every = f"Q = {c.prune_every} minibatches of {c.batch_size} per step"
        every += f" ({self.derived['prune_every']})" if "prune_every" in self.derived else ""
        return [f"schedule: {units}; {every}",
                f"schedule: {self.total_units:,} prunable units, {self.minibatches_per_epoch} minibatches per "
                f"epoch -> at most {self.max_steps} prune steps and {self.max_points} recorded trajectory "
                f"points (a fit needs {MIN_POINTS})"]

    def to_dict(self) -> dict[str, Any]:
        return {"derived": dict(self.derived), "total_units": self.total_units,
                "minibatches_per_epoch": self.minibatches_per_epoch, "max_steps": self.max_steps,
                "max_points": self.max_points, "warnings": list(self.warnings)}


def prunable_units(arch, widths: Mapping[str, int]) -> tuple[list[list[str]], int]:
    """(tied groups, units): the searchable symbols that prune together, and their channels in all."""
    groups = [list(g) for g in ir.tied_groups(arch.network, widths)]
    return groups, sum(widths[g[0]] for g in groups)


def _minibatches(num_samples: int, batch_size: int) -> int:
    return math.ceil(num_samples / batch_size)  # the pruning loader keeps the last, partial batch


def plan_schedule(arch, config: PruneConfig, widths: Mapping[str, int], num_samples: int) -> SchedulePlan:
    """Resolve the unset settings of `config` for `arch` at start `widths` on `num_samples` training
    images, and bound what the run can record. Pure: no training, no warnings issued (see `warn`)."""
    config.validate()
    start = arch.widths(widths)
    groups, total = prunable_units(arch, start)
    per_epoch = _minibatches(num_samples, config.batch_size)
    changes: dict[str, int] = {}
    derived: dict[str, str] = {}
    if config.units_per_step is None:
        units = min(PAPER_UNITS_PER_STEP, max(1, math.floor(UNIT_FRACTION * total)))
        changes["units_per_step"] = units
        derived["units_per_step"] = (
            f"the paper's {PAPER_UNITS_PER_STEP}: 1% of the {total:,} prunable units is more" if units ==
            PAPER_UNITS_PER_STEP else f"1% of the {total:,} prunable units, at least 1; the paper's "
            f"{PAPER_UNITS_PER_STEP} suits networks of 1,000 units and more")
    if config.prune_every is None:
        every = min(PAPER_PRUNE_EVERY, max(1, per_epoch))
        changes["prune_every"] = every
        derived["prune_every"] = (
            f"the paper's {PAPER_PRUNE_EVERY}" if every == PAPER_PRUNE_EVERY else
            f"one epoch: {num_samples:,} images give {per_epoch} minibatches per epoch, fewer than the "
            f"paper's {PAPER_PRUNE_EVERY}")
    resolved = config.replace(**changes) if changes else config
    max_steps, shrinkable, capped = _max_steps(arch, resolved, start, groups, total, per_epoch)
    lag = max(1, math.ceil(shrinkable / resolved.units_per_step))  # steps before every group lost a unit
    max_points = max(0, max_steps - lag + 1) if shrinkable else 0
    plan = SchedulePlan(resolved, derived, total, shrinkable, per_epoch, max_steps, max_points)
    hint = ("raise the epoch cap (--epochs, max_epochs) or lower Q (--every, prune_every)" if capped else
            "remove fewer units per step (--units, units_per_step)")
    if max_points < MIN_POINTS:
        plan.warnings.append(
            f"this pruning run will record at most {max_points} trajectory point(s), fewer than the {MIN_POINTS} "
            f"a power-law fit needs, so its profile will fall back to uniform scaling; {hint}")
    elif max_steps < TARGET_POINTS:
        plan.warnings.append(
            f"this pruning run makes at most {max_steps} prune steps; recording starts only once every layer "
            f"has lost a unit (often half-way), so it may record fewer than the {MIN_POINTS} points a fit "
            f"needs and fall back to uniform scaling; {hint}")
    return plan


def _max_steps(arch, config: PruneConfig, start: Mapping[str, int], groups: list[list[str]], total: int,
               per_epoch: int) -> tuple[int, int, bool]:
    """(prune steps the run can make at most, groups that can lose a unit, whether the epoch cap binds)."""
    minimum = {sym.name: sym.minimum for sym in arch.symbols}
    declared = [max(config.min_width, *(minimum[name] for name in group)) for group in groups]
    floors = unit_floors(arch.network, groups, start, declared)
    removable = [start[g[0]] - f for g, f in zip(groups, floors)]
    units = min(target_units(config, total), sum(removable))
    steps = math.ceil(units / config.units_per_step)
    capped = False
    if config.max_epochs is not None:
        by_epochs = config.max_epochs * per_epoch // config.prune_every
        capped = by_epochs < steps
        steps = min(steps, by_epochs)
    return steps, sum(1 for r in removable if r > 0), capped


def warn(plan: SchedulePlan) -> None:
    """Issue the plan's warnings as ScheduleWarning (what `prune` does before training)."""
    for note in plan.warnings:
        warnings.warn(note, ScheduleWarning, stacklevel=3)
