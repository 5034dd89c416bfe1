"""One pass over the training data, and what the run shows while it goes.

`EpochRunner.train_epoch` runs forward, backward and the SGD step on every batch (under autocast and a
gradient scaler when mixed precision is on) and returns the epoch's mean loss and accuracy, counted over
the samples of every process. `EpochProgress` is the tqdm bar over one epoch's batches, `open_tensorboard`
the optional SummaryWriter, and `autocast` the mixed-precision context that evaluation shares.
"""
from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pyns.train.distributed import all_reduce_sum
from pyns.train.recipe import EpochRecord

__all__ = ["EpochRunner", "EpochProgress", "open_tensorboard", "autocast"]

log = logging.getLogger("pyns.train")  # one logger for every message of a training run


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast to `dtype` on the device, or no context at all when mixed precision is off."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def open_tensorboard(folder: Path) -> Any:
    """A SummaryWriter, or None when tensorboard is not installed (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # local: tensorboard is optional
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(folder))


class EpochProgress:
    """tqdm over one epoch's batches when wanted and attached to a terminal; otherwise silent."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.bar: Any = None

    def start(self, total: int, epoch: int, epochs: int) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm  # local: defers tqdm until a bar is shown

        self.bar = tqdm(total=total, desc=f"epoch {epoch}/{epochs}", leave=False, dynamic_ncols=True, unit="batch")

    def update(self, steps: int, loss: float | None = None, acc: float | None = None) -> None:
        if self.bar is None:
            return
        if loss is not None and acc is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{100 * acc:.2f}%", refresh=False)
        self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def write(self, line: str) -> None:
        if self.enabled:
            from tqdm.auto import tqdm  # local: defers tqdm until a bar is shown

            tqdm.write(line)


class EpochRunner:
    """One pass over the training data: forward, backward, SGD step; counts loss and hits per sample."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: Any,
        amp_dtype: torch.dtype | None,
        channels_last: bool,
        device: torch.device,
        log_every: int,
        *,
        tensorboard: Any,
        progress: EpochProgress,
    ):
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.amp_dtype = amp_dtype
        self.channels_last = channels_last
        self.device = device
        self.log_every = log_every
        self.tensorboard = tensorboard
        self.progress = progress

    def train_epoch(self, loader: Any, epoch_index: int, epochs: int) -> tuple[float, float]:
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        seen = 0
        steps_per_epoch = len(loader)
        self.progress.start(steps_per_epoch, epoch_index + 1, epochs)
        last_shown = 0
        for step, (x, y) in enumerate(loader):
            if self.channels_last and x.dim() == 4:  # images; any other input keeps its layout
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.amp_dtype):
                logits = self.model(x)
                loss = F.cross_entropy(logits, y)  # batch mean: the gradient scale the recipe's lr assumes
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            batch = int(y.shape[0])
            loss_sum += loss.detach().double() * batch
            correct += (logits.detach().argmax(dim=1) == y).sum()
            seen += batch
            if (step + 1) % self.log_every == 0 or step + 1 == steps_per_epoch:
                self._report(step + 1 - last_shown, loss_sum, correct, seen, loss, epoch_index * steps_per_epoch + step)
                last_shown = step + 1
        self.progress.close()
        correct_all, loss_all, seen_all = all_reduce_sum([correct.item(), loss_sum.item(), seen], self.device)
        return loss_all / seen_all, correct_all / seen_all

    def _report(self, steps: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, loss: torch.Tensor, global_step: int) -> None:
        if self.progress.bar is None and self.tensorboard is None:
            return  # nothing to show: skip the device synchronisation
        self.progress.update(steps, loss_sum.item() / seen, correct.item() / seen)
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("train/batch_loss", loss.item(), global_step)

    def log_epoch(self, record: EpochRecord) -> None:
        line = (
            f"epoch {record.epoch}: lr {record.lr:.4g}  train loss {record.train_loss:.4f}  "
            f"train acc {100 * record.train_acc:.2f}%  test acc {100 * record.test_acc:.2f}%  ({record.time:.1f}s)"
        )
        log.info("%s", line)
        self.progress.write(line)
        if self.tensorboard is not None:
            for name in ("lr", "train_loss", "train_acc", "test_loss", "test_acc"):
                self.tensorboard.add_scalar(name.replace("_", "/", 1), getattr(record, name), record.epoch)
            self.tensorboard.flush()

    def close(self) -> None:
        self.progress.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
