"""What `pyns.train.loop.train` settles before its first step: the training device, the mixed-precision type,
loaders that fit the job (`check_loaders`), deterministic kernels for the run (`Determinism`) and seeds."""
from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from pyns.data.arrays import derive_seed
from pyns.train.distributed import DistContext, default_device
from pyns.errors import RunError
from pyns.train.recipe import TrainRecipe

__all__ = ["model_device", "resolve_amp_dtype", "resolve_device", "check_loaders", "Determinism", "seed_everything"]

log = logging.getLogger("pyns.train")  # one logger for every message of a training run


def model_device(model: nn.Module) -> torch.device:
    """Where the model's first parameter (or buffer) lives; the CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def resolve_amp_dtype(recipe: TrainRecipe, device: torch.device) -> torch.dtype | None:
    if not recipe.amp:
        return None
    if device.type != "cuda":
        log.warning("mixed precision (amp) needs a CUDA device; training on %s in float32", device)
        return None
    if recipe.amp_dtype == "bfloat16" or (recipe.amp_dtype == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def resolve_device(train_loader: Any, model: nn.Module, ctx: DistContext) -> torch.device:
    loader_device = getattr(train_loader, "device", None)
    if loader_device is not None:
        return torch.device(loader_device)
    if ctx.enabled:
        return default_device(ctx)
    return model_device(model)


def check_loaders(train_loader: Any, test_loader: Any, ctx: DistContext, recipe: TrainRecipe) -> None:
    for which, loader in (("train", train_loader), ("test", test_loader)):
        built_for = getattr(loader, "world_size", None)
        if built_for is not None and int(built_for) != ctx.world_size:
            raise RunError(
                f"the {which} loader was built for {built_for} process(es) but the job runs {ctx.world_size}",
                hint="build loaders with make_loaders(), or pass rank= and world_size= to BatchLoader",
            )
        rank = getattr(loader, "rank", None)
        if built_for is not None and rank is not None and int(rank) != ctx.rank:
            raise RunError(f"the {which} loader is the shard of rank {rank} but this process is rank {ctx.rank}")
    if len(train_loader) == 0:
        raise RunError("the training loader yields no batches; the data set is smaller than one batch")
    per_process = getattr(train_loader, "batch_size", None)
    if per_process is not None and int(per_process) * ctx.world_size != recipe.batch_size and ctx.is_main:
        log.warning(
            "the training loader's batch (%d per process x %d processes) is not the recipe's batch_size %d; "
            "the loader's is used",
            per_process, ctx.world_size, recipe.batch_size,
        )
    if ctx.enabled:
        # DDP needs every rank to take the same number of steps, else the gradient all-reduce hangs.
        counts: list[Any] = [None] * ctx.world_size
        dist.all_gather_object(counts, len(train_loader))
        if len(set(counts)) != 1:
            raise RunError(f"the training shards have different numbers of batches per process: {counts}")


class Determinism:
    """Switch deterministic kernels on for the run and restore the previous global setting afterwards."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.device = device

    def __enter__(self) -> Determinism:
        self.previous = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
        )
        if self.enabled:
            # cuBLAS needs a fixed workspace for reproducible matmuls; it must be set before first use.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        return self

    def __exit__(self, *exc: Any) -> None:
        enabled, warn_only, benchmark, deterministic = self.previous
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = deterministic


def seed_everything(seed: int, stream: str | None = None) -> None:
    """Seed Python, NumPy and torch (every CUDA device too) from `seed`; with `stream` (a pruning run:
    "prune"), from seeds derived per library for that stream instead, so that its random numbers are
    independent of a training run's with the same seed."""
    if stream is None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        return
    random.seed(derive_seed(seed, f"{stream}-python"))
    np.random.seed(derive_seed(seed, f"{stream}-numpy") % 2**32)
    torch.manual_seed(derive_seed(seed, f"{stream}-torch"))
