"""Final training of a built network: the paper's SGD recipe, crash-safe checkpoints, exact resume, DDP.

`train(model, train_loader, test_loader, recipe, out_dir=...)` runs SGD with a multi-step learning-rate
schedule (SPEC §5 "Final training") and keeps in `out_dir`:

    checkpoint.pt      end of the last finished epoch: model, optimizer, scheduler, loader and RNG states,
                       history (written atomically; `resume=True` continues from it bit-for-bit)
    best_model.pt      model weights of the epoch with the highest test accuracy so far
    metrics.jsonl      one line per epoch: epoch, lr, train_loss, train_acc, test_loss, test_acc, time
    train_config.json  the recipe and run shape, checked on resume
    result.json        the final summary (final and best test accuracy, clearly labelled)
    tensorboard/       scalars, when tensorboard is installed
    .pyns-lock         held by rank 0 for the run: a second process training here is refused (pyns.runlock)

Accuracies are counted over samples (correct / total), never averaged over batches (a defect of the
reference code). Under torchrun (`WORLD_SIZE` > 1) the model is wrapped in DistributedDataParallel, the
counts are all-reduced and only rank 0 writes files.

`recipe.channels_last` trains in NHWC memory (by default on the CPU, where it is 1.16-1.44x faster per
step: benchmarks/bench_train_layout.py; on CUDA when set). On the CPU the model's BatchNorm2d layers then
run on pyns' kernel for the run (pyns.batchnorm.rows_batchnorm, the ReLU after each folded in) and are
handed back as plain nn.BatchNorm2d / nn.ReLU.

The loaders follow `pyns.data.augment.BatchLoader`'s protocol: iterating yields `(x, y)` batches already on the
training device; `len()` is the number of batches; optional `state_dict()` / `load_state_dict()` make
mid-run resume exact; optional `device`, `rank` and `world_size` attributes are checked when present.

Modules: pyns.train.recipe (TrainRecipe, EpochRecord, TrainResult), pyns.train.distributed (process group,
collectives), pyns.train.setup (device, AMP type, loader checks, determinism), pyns.train.epoch (one
training pass, progress bar, TensorBoard), pyns.train.checkpoint (checkpoint.pt). This module holds the
loop, `make_loaders`, `evaluate` and the run folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pyns.train.distributed import DistContext, all_reduce_sum, default_device, setup_distributed
from pyns.batchnorm import rows_batchnorm
from pyns.data.augment import BatchLoader, default_augment
from pyns.errors import RunError
from pyns.runfiles import (
    append_jsonl,
    atomic_torch_save,
    atomic_write_json,
    compare_configs,
    load_config,
    save_config,
    write_jsonl,
)
from pyns.runlock import lock_folder
from pyns.safewrite import make_folder
from pyns.train.checkpoint import checkpoint_payload, restore_checkpoint
from pyns.train.epoch import EpochProgress, EpochRunner, autocast, open_tensorboard
from pyns.train.recipe import EpochRecord, TrainRecipe, TrainResult, result_from_history
from pyns.train.setup import (
    Determinism,
    check_loaders,
    model_device,
    resolve_amp_dtype,
    resolve_device,
    seed_everything,
)

# Re-exported, unused here: the public training API is imported from pyns.train.loop (torchrun scripts set up
# and tear down the process group; readers of a run folder load its checkpoint).
from pyns.train.distributed import cleanup_distributed, distributed_context
from pyns.train.checkpoint import load_checkpoint

__all__ = [
    "TrainRecipe",
    "EpochRecord",
    "TrainResult",
    "DistContext",
    "distributed_context",
    "setup_distributed",
    "cleanup_distributed",
    "default_device",
    "make_loaders",
    "train",
    "evaluate",
    "load_checkpoint",
    "CHECKPOINT_FILE",
    "BEST_MODEL_FILE",
    "METRICS_FILE",
    "CONFIG_FILE",
    "RESULT_FILE",
]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
BEST_MODEL_FILE = "best_model.pt"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.json"
RESULT_FILE = "result.json"
TENSORBOARD_DIR = "tensorboard"

# Changing these between the interrupted run and the resumed one cannot break exactness of what was
# already trained: `epochs` only moves the end point (milestones are absolute epochs, not fractions).
_RESUMABLE_CHANGES = ("recipe.epochs",)


# ----------------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------------


_DEFAULT = object()


def make_loaders(
    train_set: Any,
    test_set: Any,
    recipe: TrainRecipe,
    *,
    augment: Any = _DEFAULT,
    device: torch.device | str | None = None,
    seed: int | None = None,
    test_batch_size: int | None = None,
) -> tuple[Any, Any]:
    """Build sharded `pyns.data.augment.BatchLoader`s for `train`: per-process batch = recipe.batch_size / W.

    `augment` defaults to the data set's standard augmentation (`pyns.data.augment.default_augment`); pass None
    for none. The loader seed defaults to the recipe's seed.
    """
    ctx = setup_distributed(None if device is None else torch.device(device).type)
    if recipe.batch_size % ctx.world_size:
        raise RunError(
            f"the batch size {recipe.batch_size} must be divisible by the number of processes {ctx.world_size}"
        )
    per_rank = recipe.batch_size // ctx.world_size
    device = torch.device(device) if device is not None else default_device(ctx)
    if augment is _DEFAULT:
        augment = default_augment(train_set.name)
    seed = recipe.seed if seed is None else seed
    shard = {"rank": ctx.rank, "world_size": ctx.world_size}
    train_loader = BatchLoader(train_set, per_rank, train=True, augment=augment, device=device, seed=seed, **shard)
    test_loader = BatchLoader(
        test_set, test_batch_size or per_rank, train=False, augment=None, device=device, seed=seed, **shard
    )
    return train_loader, test_loader


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over every sample the loader yields, counted, not batch-averaged.

    Under an initialised process group the counts are summed over processes, so every rank must call it
    with its shard of the data. A DDP-wrapped model is unwrapped first (DDP's forward would start
    collectives that ranks with different batch counts never match). The model's train/eval mode is restored.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    was_training = model.training
    model.eval()
    device = model_device(model)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    try:
        for x, y in loader:
            if channels_last and x.dim() == 4:  # images; any other input keeps its layout
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp_dtype):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(dim=1) == y).sum()
            total += int(y.shape[0])
    finally:
        model.train(was_training)
    correct_all, loss_all, total_all = all_reduce_sum([correct.item(), loss_sum.item(), total], device)
    if total_all == 0:
        raise RunError("the evaluation data yielded no samples; check the test set and the loader")
    return correct_all / total_all, loss_all / total_all


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


def _prepare_run_folder(out: Path, resume: bool, overwrite: bool, ctx: DistContext) -> None:
    checkpoint = out / CHECKPOINT_FILE
    if resume:
        if not checkpoint.exists():
            raise RunError(f"cannot resume: there is no {CHECKPOINT_FILE} in {out}", hint="start without resume")
        return
    if checkpoint.exists() and not overwrite:
        raise RunError(
            f"{out} already holds a training run",
            hint="pass resume=True to continue it, overwrite=True to start over, or choose another folder",
        )
    if ctx.is_main:
        make_folder(out)
        for stale in (CHECKPOINT_FILE, BEST_MODEL_FILE, RESULT_FILE, METRICS_FILE):
            (out / stale).unlink(missing_ok=True)


def _lock_run_folder(out: Path):
    """Rank 0 owns the run folder for the whole run: a second process on it gets RunBusy (pyns.runlock).
    Other ranks share rank 0's folder and write nothing, so they take no lock."""
    if not distributed_context().is_main:
        return contextlib.nullcontext()
    make_folder(out)
    return lock_folder(out)


def train(
    model: nn.Module,
    train_loader: Any,
    test_loader: Any,
    recipe: TrainRecipe,
    *,
    out_dir: str | os.PathLike,
    resume: bool = False,
    overwrite: bool = False,
    log_every: int = 50,
    progress: bool = True,
) -> TrainResult:
    """Train `model` with `recipe`, evaluating on `test_loader` after every epoch; see the module doc.

    The run folder is locked for the duration (RunBusy when another process trains in it).
    """
    with _lock_run_folder(Path(out_dir)):
        return _train(model, train_loader, test_loader, recipe, out_dir=out_dir, resume=resume,
                      overwrite=overwrite, log_every=log_every, progress=progress)


def _train(
    model: nn.Module,
    train_loader: Any,
    test_loader: Any,
    recipe: TrainRecipe,
    *,
    out_dir: str | os.PathLike,
    resume: bool,
    overwrite: bool,
    log_every: int,
    progress: bool,
) -> TrainResult:
    """`train` with its folder locked.

    `resume=True` continues from `out_dir/checkpoint.pt` and ends exactly where an uninterrupted run
    with the same seed would (given deterministic kernels); only `recipe.epochs` may differ from the
    saved run. Without `resume`, a folder that already holds a run is refused unless `overwrite=True`.
    `log_every` is the number of steps between progress-bar and TensorBoard updates (each costs one
    device synchronisation). Ctrl-C leaves the last finished epoch's checkpoint and re-raises.
    The model is trained in place (moved to the loaders' device); under DDP it is wrapped internally.
    """
    if log_every < 1:
        raise RunError(f"log_every must be >= 1, got {log_every}")
    ctx = setup_distributed()
    out = Path(out_dir)
    device = resolve_device(train_loader, model, ctx)
    check_loaders(train_loader, test_loader, ctx, recipe)
    _prepare_run_folder(out, resume, overwrite, ctx)

    raw = _unwrap(model)
    config = _run_config(raw, recipe, ctx, train_loader)
    if resume:
        # Every rank reads and judges the saved config, so that all of them stop on a mismatch (a rank
        # left waiting in a collective for one that raised would hang the job).
        _verify_config(out, config)
    if ctx.is_main:
        save_config(out, config, CONFIG_FILE)
    amp_dtype = resolve_amp_dtype(recipe, device)
    channels_last = recipe.uses_channels_last(device)
    if recipe.channels_last and not channels_last:
        log.warning("channels_last runs on CUDA and the CPU only; keeping the default layout on %s", device)
    # On the CPU, channels-last BatchNorm runs on pyns' kernel (torch's is 2-6x slower at the odd widths a
    # scaled network has: pyns.batchnorm); torch.compile keeps torch's, which it can trace.
    batchnorm = (rows_batchnorm(raw) if channels_last and device.type == "cpu" and not recipe.compile
                 else contextlib.nullcontext())

    with Determinism(recipe.deterministic, device), batchnorm:
        if not resume:
            seed_everything(recipe.seed + ctx.rank)  # distinct dropout masks per rank, reproducible
        raw.to(device)
        if channels_last:
            raw.to(memory_format=torch.channels_last)
        optimizer, scheduler, scaler = _optimizers(raw, recipe, amp_dtype)
        history: list[EpochRecord] = []
        if resume:
            history = _restore(out, raw, optimizer, scheduler, scaler, train_loader, test_loader, ctx, recipe)
        step_model, eval_model = _wrap(raw, ctx, device, recipe)
        runner = EpochRunner(
            step_model, optimizer, scaler, amp_dtype, channels_last, device, log_every,
            tensorboard=open_tensorboard(out / TENSORBOARD_DIR) if ctx.is_main else None,
            progress=EpochProgress(progress and ctx.is_main),
        )
        pending: tuple[dict[str, Any], EpochRecord, bool] | None = None  # finished epoch not yet on disk
        saved_epoch = len(history)
        try:
            for epoch_index in range(len(history), recipe.epochs):
                record = _run_epoch(runner, raw, eval_model, scheduler, train_loader, test_loader, ctx,
                                    epoch_index, recipe.epochs, amp_dtype, channels_last)
                improved = not history or record.test_acc > max(r.test_acc for r in history)
                history.append(record)
                payload = checkpoint_payload(
                    record.epoch, recipe, ctx, raw, optimizer, scheduler, scaler, train_loader, test_loader, history
                )
                if ctx.is_main:
                    pending = (payload, record, improved)
                    _commit_epoch(out, *pending)
                    pending = None
                    runner.log_epoch(record)
                saved_epoch = record.epoch
        except KeyboardInterrupt:
            # The interrupt may have landed while a finished epoch was being written (each write is atomic,
            # so the previous files are intact): no training step happened since, so write it again.
            if pending is not None:
                _commit_epoch(out, *pending)
                saved_epoch = pending[1].epoch
            if ctx.is_main:
                # Said in both vocabularies: this runs under `pyns train` and under the Python API alike.
                log.warning("interrupted: epoch %d is saved in %s; continue with the same command and --resume "
                            "(Python: resume=True)", saved_epoch, out)
            raise
        finally:
            runner.close()
    return _finish(history, out, ctx)


def _run_config(raw: nn.Module, recipe: TrainRecipe, ctx: DistContext, train_loader: Any) -> dict[str, Any]:
    """What config.json records (and a resume must match)."""
    return {
        "recipe": dataclasses.asdict(recipe),
        "world_size": ctx.world_size,
        "model": {"class": type(raw).__name__, "params": sum(p.numel() for p in raw.parameters())},
        "train_batches_per_epoch": len(train_loader),
    }


def _optimizers(raw: nn.Module, recipe: TrainRecipe, amp_dtype: torch.dtype | None):
    """SGD, the step schedule, and a gradient scaler where float16 autocast needs one."""
    optimizer = torch.optim.SGD(
        raw.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(recipe.milestones), gamma=recipe.gamma)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return optimizer, scheduler, scaler


def _restore(out: Path, raw, optimizer, scheduler, scaler, train_loader, test_loader, ctx: DistContext,
             recipe: TrainRecipe) -> list[EpochRecord]:
    """Load the checkpoint into everything; the metrics log is cut back to the checkpoint's epochs."""
    history = restore_checkpoint(
        out / CHECKPOINT_FILE, raw, optimizer, scheduler, scaler, train_loader, test_loader, ctx
    )
    if len(history) > recipe.epochs:
        raise RunError(f"the checkpoint already has {len(history)} epochs, more than the recipe's {recipe.epochs}")
    if ctx.is_main:
        write_jsonl(out / METRICS_FILE, [dataclasses.asdict(r) for r in history])  # drop lines past it
    return history


def _wrap(raw: nn.Module, ctx: DistContext, device: torch.device, recipe: TrainRecipe) -> tuple[nn.Module, nn.Module]:
    """(the model that takes optimiser steps: DDP and/or compiled, the model that evaluates)."""
    step_model: nn.Module = raw
    if ctx.enabled:
        ids = [device.index] if device.type == "cuda" else None
        step_model = nn.parallel.DistributedDataParallel(raw, device_ids=ids)
    eval_model: nn.Module = raw
    if recipe.compile:
        step_model = torch.compile(step_model)
        eval_model = torch.compile(raw)
    return step_model, eval_model


def _run_epoch(runner: EpochRunner, raw: nn.Module, eval_model: nn.Module, scheduler, train_loader, test_loader,
               ctx: DistContext, epoch_index: int, epochs: int, amp_dtype, channels_last: bool) -> EpochRecord:
    """One epoch: train, agree on BN statistics across ranks, evaluate, step the schedule."""
    started = time.perf_counter()
    lr = runner.optimizer.param_groups[0]["lr"]
    train_loss, train_acc = runner.train_epoch(train_loader, epoch_index, epochs)
    if ctx.enabled:
        # Each rank updated BN running statistics on its own shard: adopt rank 0's everywhere so
        # that evaluation and the checkpoint describe one model.
        for buffer in raw.buffers():
            dist.broadcast(buffer, src=0)
    test_acc, test_loss = evaluate(eval_model, test_loader, amp_dtype=amp_dtype, channels_last=channels_last)
    scheduler.step()
    record = EpochRecord(epoch_index + 1, lr, train_loss, train_acc, test_loss, test_acc, time.perf_counter() - started)
    if not math.isfinite(train_loss):
        raise RunError(
            f"training diverged: the train loss is {train_loss} in epoch {record.epoch}",
            hint="lower the learning rate; the checkpoint of the previous epoch is kept",
        )
    return record


def _finish(history: list[EpochRecord], out: Path, ctx: DistContext) -> TrainResult:
    result = result_from_history(history, out)
    if ctx.is_main:
        atomic_write_json(out / RESULT_FILE, result.to_dict())
        log.info("%s", result.summary())
    if ctx.enabled:
        # Nobody leaves before rank 0 has written everything: a caller that reads the run folder next
        # (or resumes it) on another rank must find the files complete.
        dist.barrier()
    return result


def _verify_config(out: Path, config: dict[str, Any]) -> None:
    saved = load_config(out, CONFIG_FILE)
    if saved is None:
        return  # an older folder without a config: the checkpoint's own checks still apply
    differences = compare_configs(saved, config, ignore=_RESUMABLE_CHANGES)
    if differences:
        raise RunError(
            f"cannot resume the run in {out} with different settings: " + "; ".join(differences),
            hint="resume with the original settings (only the number of epochs may change)",
        )


def _commit_epoch(out: Path, payload: dict[str, Any], record: EpochRecord, improved: bool) -> None:
    """Write a finished epoch: best weights first, then the checkpoint, then its metrics line."""
    if improved:
        atomic_torch_save(payload["model"], out / BEST_MODEL_FILE)
    atomic_torch_save(payload, out / CHECKPOINT_FILE)
    append_jsonl(out / METRICS_FILE, dataclasses.asdict(record))
