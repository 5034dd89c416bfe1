"""The settings of Algorithm 1 (SPEC §5, iterative Taylor-FO pruning) and the rules that follow from them.

Every number the paper fixes is a field here with the paper's value as its default, so a run folder's
config.json states the whole experiment. Pure functions of the config and the widths decide the
learning rate of an epoch, when recording starts and when pruning stops; the loop in
pyns.neuralscale.prune.pruner only calls them, and the tests drive them with scripted inputs.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyns.data.names import canonical_name
from pyns.errors import RunError

__all__ = [
    "STOP_EPOCH_LIMIT",
    "STOP_FRACTION_REACHED",
    "STOP_MIN_WIDTH",
    "STOP_NOTHING_LEFT",
    "PruneConfig",
    "lr_at",
    "recording_started",
    "target_units",
]

# Why a run ended (stored in checkpoints and the run summary).
STOP_FRACTION_REACHED = "stop_fraction reached"
STOP_MIN_WIDTH = "a width would drop below min_width"
STOP_EPOCH_LIMIT = "epoch limit reached"
STOP_NOTHING_LEFT = "every width is at min_width"


@dataclass
class PruneConfig:
    """Algorithm 1 with the NeuralScale reference defaults (CIFAR; see `for_dataset` for TinyImageNet).

    `units_per_step` and `prune_every` left unset are derived from the network and the data set when the
    run starts (`pyns.neuralscale.prune.defaults.plan_schedule`), because the paper's 10 units every 50
    minibatches were chosen for VGG11 on CIFAR and record too few trajectory points on small networks.

    Epochs are counted from 0 over the whole run: epochs 0 .. warmup_epochs-1 pre-train the full network,
    pruning starts with epoch `warmup_epochs`.
    """

    warmup_epochs: int = 10  # P: pre-training epochs before the first prune step
    warmup_lr: float = 0.1  # learning rate while pre-training
    prune_lr: float = 0.01  # learning rate when pruning starts ...
    lr_decay: float = 1.5  # ... divided by this factor ...
    lr_decay_every: int = 10  # ... every this many pruning epochs
    momentum: float = 0.5
    weight_decay: float = 5e-4
    batch_size: int = 256  # 100 on TinyImageNet
    # Q: minibatches of importance collected per prune step. None: the paper's 50 (100 on TinyImageNet),
    # or one epoch when an epoch has fewer minibatches (pyns.neuralscale.prune.defaults).
    prune_every: int | None = None
    # Units removed per prune step. None: 1% of the network's prunable units, at least 1 and at most the
    # paper's 10 (the paper's value from ~1,000 units up; VGG11 on CIFAR has 2,752), so that every network
    # gets ~95 prune steps (pyns.neuralscale.prune.defaults).
    units_per_step: int | None = None
    stop_fraction: float = 0.95  # stop once this fraction of the filters is gone (pyns.channels.count_filters)
    min_width: int = 1  # no width may drop below this
    # What to do when one of the lowest-ranked units sits in a group already at min_width: the paper
    # stops the run ("a layer would drop below 1"); False skips that unit and ranks on.
    stop_at_min_width: bool = True
    max_epochs: int | None = None  # cap on pruning epochs after the warm-up (None: until a stop rule)
    # True: the data set's standard augmentation (pyns.data.augment.default_augment); False: none; or a
    # `--augment` spec such as "crop,flip,rotate=20" / its parsed dict (pyns.data.augment_spec)
    augment: bool | str | dict = True
    seed: int = 0
    # Seconds between checkpoints, at most (checked after every prune step and warm-up epoch; the end of
    # the run and Ctrl-C always save). A checkpoint of a large network can take as long as a prune step,
    # so one every step would double the run; a minute loses at most a minute of work to a crash.
    checkpoint_interval_s: float = 60.0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Reject settings that cannot run, each with one sentence naming the expected range."""
        checks = [
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (self.warmup_lr > 0, f"warmup_lr must be > 0, got {self.warmup_lr}"),
            (self.prune_lr > 0, f"prune_lr must be > 0, got {self.prune_lr}"),
            (self.lr_decay >= 1, f"lr_decay must be >= 1 (the rate is divided by it), got {self.lr_decay}"),
            (self.lr_decay_every >= 1, f"lr_decay_every must be >= 1 epoch, got {self.lr_decay_every}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.prune_every is None or self.prune_every >= 1,
             f"prune_every must be >= 1 minibatch (or unset: derived from the data set), got {self.prune_every}"),
            (self.units_per_step is None or self.units_per_step >= 1,
             f"units_per_step must be >= 1 (or unset: derived from the network), got {self.units_per_step}"),
            (0 < self.stop_fraction < 1, f"stop_fraction must be in (0, 1), got {self.stop_fraction}"),
            (self.min_width >= 1, f"min_width must be >= 1, got {self.min_width}"),
            (self.max_epochs is None or self.max_epochs >= 0,
             f"max_epochs must be >= 0 or unset, got {self.max_epochs}"),
            (self.checkpoint_interval_s >= 0,
             f"checkpoint_interval_s must be >= 0 seconds, got {self.checkpoint_interval_s}"),
        ]
        for ok, message in checks:
            if not ok:
                raise RunError(message)

    @classmethod
    def for_dataset(cls, name: str, **overrides: Any) -> PruneConfig:
        """The reference defaults for a data set: TinyImageNet uses batch 100 and Q = 100 (SPEC §5)."""
        key = canonical_name(name)
        base: dict[str, Any] = {"batch_size": 100, "prune_every": 100} if key == "tinyimagenet" else {}
        return cls(**{**base, **overrides})

    @property
    def resolved(self) -> bool:
        """Whether every setting is a number (the loop needs that; see pyns.neuralscale.prune.defaults)."""
        return self.units_per_step is not None and self.prune_every is not None

    def replace(self, **changes: Any) -> PruneConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PruneConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RunError(f"unknown pruning option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


def lr_at(config: PruneConfig, epoch: int) -> float:
    """Learning rate of (0-based) `epoch`: warmup_lr while pre-training, then prune_lr divided by
    lr_decay once per lr_decay_every pruning epochs."""
    if epoch < config.warmup_epochs:
        return config.warmup_lr
    return config.prune_lr / config.lr_decay ** ((epoch - config.warmup_epochs) // config.lr_decay_every)


def recording_started(initial: Mapping[str, int], widths: Mapping[str, int], searchable: Sequence[str],
                      exempt: Collection[str] = ()) -> bool:
    """Whether every searchable width has lost at least one unit (SPEC §5: only then is (τ, φ) recorded,
    because a layer nobody has pruned yet says nothing about how its width scales with τ).

    `exempt` widths are left out: those at their floor from the start (min_width, or a declared
    `[min = N]`), which can never lose a unit and would otherwise keep recording from ever starting."""
    return all(widths[name] < initial[name] for name in searchable if name not in exempt)


def target_units(config: PruneConfig, total_units: int) -> int:
    """Filters (or any count) whose removal ends the run: the first whole number at or above
    stop_fraction x total. The pruner applies it to filters, as the paper does (pyns.channels.count_filters)."""
    # 1e-9 keeps an exact product like 0.95 * 100 = 95.00000000000001 from rounding up to 96.
    return max(1, math.ceil(config.stop_fraction * total_units - 1e-9))
