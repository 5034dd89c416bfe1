"""A pruning run's position and result: the loop's state beside the tensors, what `prune` returns, and
the checkpoint format that holds them (pyns.neuralscale.prune.pruner writes and resumes it)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyns.neuralscale.prune.defaults import SchedulePlan
from pyns.runfiles import load_versioned_checkpoint

__all__ = ["PruneResult", "PruneState", "load_prune_checkpoint", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION"]

CHECKPOINT_FORMAT = "pyns-prune-checkpoint"
CHECKPOINT_VERSION = 2  # 2: derived-width keep sets, filters, the class importance sums


def load_prune_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a pruning run's checkpoint.pt (tensors on the CPU, weights only), refusing files that are not one."""
    return load_versioned_checkpoint(path, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "pruning")


@dataclass
class PruneState:
    """Everything about the loop's position that is not a tensor of the model or optimizer."""

    widths: dict[str, int]  # current width of every symbol (searchable ones shrink)
    # per channel space (searchable symbols and derived spaces, pyns.channels): surviving channel
    # indices of the start network
    kept: dict[str, list[int]]
    total_filters: int  # filters of the searchable widths at the start (what the stop fraction counts)
    total_units: int  # channels the ranking chose from at the start (a tied class's channel once)
    epoch: int = 0  # epoch of the next minibatch (0-based, warm-up included)
    minibatches: int = 0  # minibatches trained so far
    since_prune: int = 0  # minibatches whose importance and loss are collected for the next prune step
    loss_sum: float = 0.0  # sum of their losses
    step: int = 0  # prune steps done
    removed_units: int = 0
    recording: bool = False
    done: bool = False
    stop_reason: str | None = None
    seconds: float = 0.0  # training wall time so far, over all sessions


@dataclass
class PruneResult:
    run_dir: Path
    rows: list[dict[str, Any]]
    widths: dict[str, int]
    params: int
    macs: int
    done: bool
    stop_reason: str | None
    steps: int
    seconds: float
    schedule: SchedulePlan | None = None  # the effective settings, which ones were derived, the points bound

    @property
    def recorded(self) -> list[dict[str, Any]]:
        return [row for row in self.rows if row["recording"]]


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------
