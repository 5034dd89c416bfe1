"""What a training run is told and what it gives back: the SGD recipe, one epoch's record, the result.

`TrainRecipe` holds the paper's SGD settings (SPEC §5 "Final training") and validates them; `EpochRecord`
is one line of metrics.jsonl; `TrainResult` is what `pyns.train.loop.train` returns and writes to result.json,
with the final test accuracy beside the best-over-epochs one the paper reports, clearly labelled.
Accuracies are fractions of samples (correct / total), never averages over batches.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyns.errors import RunError

if TYPE_CHECKING:  # the recipe itself needs no torch (the CLI builds one before importing it)
    import torch

__all__ = ["TrainRecipe", "EpochRecord", "TrainResult", "result_from_history"]


# ----------------------------------------------------------------------------------------------------
# Recipe
# ----------------------------------------------------------------------------------------------------


@dataclass
class TrainRecipe:
    """SGD with momentum and a step schedule. Defaults are the paper's CIFAR recipe (SPEC §5).

    `batch_size` is the global batch: under DDP each of W processes takes batch_size / W per step, so
    the learning rate stays right for the same recipe on any number of GPUs (`make_loaders` does this).
    `milestones` are 0-based epoch indices at which the learning rate is multiplied by `gamma`: with
    (100, 200, 250), epochs 1-100 (1-based) train at lr, 101-200 at lr*gamma, and so on.
    """

    lr: float = 0.1
    momentum: float = 0.5
    weight_decay: float = 5e-4
    batch_size: int = 128
    epochs: int = 300
    milestones: tuple[int, ...] = (100, 200, 250)
    gamma: float = 0.1
    seed: int = 0
    amp: bool = False  # mixed precision autocast, CUDA only (ignored with a warning elsewhere)
    amp_dtype: str = "auto"  # "auto" (bfloat16 where supported, else float16), "bfloat16", "float16"
    # NHWC memory layout. None: on the CPU (1.16-1.44x faster steps there with pyns' BatchNorm, README
    # "Speed"), off elsewhere; True also turns it on for CUDA (tensor-core convs).
    channels_last: bool | None = None
    compile: bool = False  # torch.compile the model (first epoch pays the compilation time)
    deterministic: bool = False  # torch.use_deterministic_algorithms; for tests and exact comparisons

    def __post_init__(self) -> None:
        self.milestones = tuple(int(m) for m in self.milestones)
        problems = []
        if not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            problems.append(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.epochs < 1:
            problems.append(f"epochs must be >= 1, got {self.epochs}")
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])) or any(m < 1 for m in self.milestones):
            problems.append(f"milestones must be increasing positive epochs, got {list(self.milestones)}")
        if not 0 < self.gamma <= 1:
            problems.append(f"gamma must be in (0, 1], got {self.gamma}")
        if self.channels_last not in (None, True, False):
            problems.append(f"channels_last must be True, False or None (the device decides), got {self.channels_last!r}")
        if self.amp_dtype not in ("auto", "bfloat16", "float16"):
            problems.append(f"amp_dtype must be 'auto', 'bfloat16' or 'float16', got {self.amp_dtype!r}")
        if problems:
            raise RunError("invalid training recipe: " + "; ".join(problems))

    @classmethod
    def cifar(cls, **overrides: Any) -> TrainRecipe:
        """The paper's CIFAR-10/100 recipe: 300 epochs, lr 0.1 divided by 10 at epochs 100, 200, 250."""
        return cls(**overrides)

    @classmethod
    def tinyimagenet(cls, **overrides: Any) -> TrainRecipe:
        """The paper's TinyImageNet recipe: 150 epochs, lr 0.1 divided by 10 at epochs 50 and 100."""
        settings: dict[str, Any] = {"epochs": 150, "milestones": (50, 100), "batch_size": 128}
        settings.update(overrides)
        return cls(**settings)

    def replace(self, **overrides: Any) -> TrainRecipe:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **overrides)

    def uses_channels_last(self, device: torch.device) -> bool:
        """Whether training on `device` runs in NHWC memory: as set, or on the CPU when left None. Devices
        other than CUDA and the CPU keep the default layout."""
        if device.type not in ("cuda", "cpu"):
            return False
        return device.type == "cpu" if self.channels_last is None else self.channels_last

    def lr_at(self, epoch: int) -> float:
        """Learning rate used during 0-based `epoch`."""
        passed = sum(1 for m in self.milestones if m <= epoch)
        return self.lr * self.gamma**passed


# ----------------------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------------------


@dataclass
class EpochRecord:
    """What one epoch produced. `epoch` is 1-based; `lr` is the rate used during that epoch."""

    epoch: int
    lr: float
    train_loss: float  # mean cross-entropy over the epoch's training samples (augmented, train mode)
    train_acc: float  # fraction of training samples classified right during the epoch
    test_loss: float
    test_acc: float  # fraction of test samples classified right after the epoch
    time: float  # seconds of wall time for training + evaluation of this epoch


@dataclass
class TrainResult:
    """Outcome of `train`. The paper reports `best_test_acc`; `final_test_acc` is the honest number."""

    final_test_acc: float  # test accuracy after the last epoch
    best_test_acc: float  # maximum test accuracy over epochs, as the paper reports
    best_epoch: int  # 1-based epoch where best_test_acc was reached
    final_test_loss: float
    final_train_loss: float
    final_train_acc: float
    epochs: int
    history: list[EpochRecord] = field(default_factory=list)
    out_dir: Path | None = None

    def summary(self) -> str:
        return (
            f"final test accuracy: {100 * self.final_test_acc:.2f}% (after epoch {self.epochs}); "
            f"best test accuracy (max over epochs, as the paper reports): "
            f"{100 * self.best_test_acc:.2f}% (epoch {self.best_epoch}); "
            f"final train loss {self.final_train_loss:.4f}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "final_test_acc": self.final_test_acc,
            "best_test_acc": self.best_test_acc,
            "best_test_acc_note": "maximum test accuracy over epochs, as the paper reports",
            "best_epoch": self.best_epoch,
            "final_test_loss": self.final_test_loss,
            "final_train_loss": self.final_train_loss,
            "final_train_acc": self.final_train_acc,
            "epochs": self.epochs,
        }


def result_from_history(history: Sequence[EpochRecord], out_dir: Path | None) -> TrainResult:
    last = history[-1]
    best = max(history, key=lambda r: (r.test_acc, -r.epoch))  # earliest epoch wins ties
    return TrainResult(
        final_test_acc=last.test_acc,
        best_test_acc=best.test_acc,
        best_epoch=best.epoch,
        final_test_loss=last.test_loss,
        final_train_loss=last.train_loss,
        final_train_acc=last.train_acc,
        epochs=last.epoch,
        history=list(history),
        out_dir=out_dir,
    )
