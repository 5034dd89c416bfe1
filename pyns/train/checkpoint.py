"""The training checkpoint: what `pyns.train.loop.train` saves after every epoch and how a resume reads it back.

A checkpoint (checkpoint.pt in the run folder) holds the model, optimizer, scheduler and grad-scaler
states, every process's RNG state and loader position (gathered in rank order), the recipe, the job's
number of processes and the history of finished epochs. `load_checkpoint` reads one, refusing files that
are not one; `restore_checkpoint` puts it back into a freshly built model, optimizer and loaders so that
the resumed run continues bit-for-bit.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyns.train.distributed import DistContext, gather_rank_states
from pyns.errors import RunError
from pyns.runfiles import capture_rng_state, load_versioned_checkpoint, restore_rng_state
from pyns.train.recipe import EpochRecord, TrainRecipe

__all__ = ["load_checkpoint", "checkpoint_payload", "restore_checkpoint"]

_CHECKPOINT_FORMAT = "pyns-train-checkpoint"
_CHECKPOINT_VERSION = 1


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (tensors on the CPU), refusing files that are not one."""
    return load_versioned_checkpoint(path, _CHECKPOINT_FORMAT, _CHECKPOINT_VERSION, "training")


def _loader_state(loader: Any) -> Any:
    return loader.state_dict() if hasattr(loader, "state_dict") else None


def _load_loader_state(loader: Any, state: Any, which: str) -> None:
    if state is None:
        return
    if not hasattr(loader, "load_state_dict"):
        raise RunError(f"the checkpoint holds a {which} loader position but this {which} loader cannot restore one")
    loader.load_state_dict(state)


def checkpoint_payload(
    epoch: int,
    recipe: TrainRecipe,
    ctx: DistContext,
    raw: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    train_loader: Any,
    test_loader: Any,
    history: list[EpochRecord],
) -> dict[str, Any]:
    local = {"rng": capture_rng_state(), "train_loader": _loader_state(train_loader), "test_loader": _loader_state(test_loader)}
    return {
        "format": _CHECKPOINT_FORMAT,
        "version": _CHECKPOINT_VERSION,
        "epoch": epoch,
        "recipe": dataclasses.asdict(recipe),
        "world_size": ctx.world_size,
        "model": raw.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ranks": gather_rank_states(local, ctx),
        "history": [dataclasses.asdict(r) for r in history],
    }


def restore_checkpoint(
    path: Path,
    raw: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    train_loader: Any,
    test_loader: Any,
    ctx: DistContext,
) -> list[EpochRecord]:
    payload = load_checkpoint(path)
    if payload["world_size"] != ctx.world_size:
        raise RunError(
            f"the checkpoint was written by {payload['world_size']} process(es); resume it with the same number, "
            f"not {ctx.world_size}"
        )
    try:
        raw.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise RunError(f"the checkpoint in {path} does not fit this model ({err})") from None
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    if scaler is not None and payload.get("scaler") is not None:
        scaler.load_state_dict(payload["scaler"])
    mine = payload["ranks"][ctx.rank]
    _load_loader_state(train_loader, mine["train_loader"], "train")
    _load_loader_state(test_loader, mine["test_loader"], "test")
    restore_rng_state(mine["rng"])
    return [EpochRecord(**r) for r in payload["history"]]
