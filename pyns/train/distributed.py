"""Where this process sits in a (possibly single-process) job, and the collectives training needs.

Under torchrun (`WORLD_SIZE` > 1) `setup_distributed` initialises the process group (NCCL on CUDA, gloo on
CPU) and binds each process to its GPU; in a plain single process every function here is a no-op or
answers rank 0 of 1. `all_reduce_sum` sums counts over processes (accuracies are counted over samples of
every shard) and `gather_rank_states` collects each process's own state (RNG, loader position) for the
checkpoint.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from pyns.errors import RunError

__all__ = [
    "DistContext",
    "distributed_context",
    "setup_distributed",
    "cleanup_distributed",
    "default_device",
    "parse_device",
    "all_reduce_sum",
    "gather_rank_states",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a (possibly single-process) job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise RunError(f"environment variable {name} must be an integer, got {value!r}") from None


def distributed_context() -> DistContext:
    """The job shape from an initialised process group, else from torchrun's environment variables."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), _env_int("LOCAL_RANK", 0))
    return DistContext(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))


def setup_distributed(device_type: str | None = None) -> DistContext:
    """Initialise the process group when launched by torchrun with more than one process (idempotent).

    NCCL on CUDA, gloo on CPU (`device_type="cpu"` forces gloo even where a GPU exists). On CUDA each
    process is bound to GPU `LOCAL_RANK`.
    """
    ctx = distributed_context()
    if not ctx.enabled or dist.is_initialized():
        return ctx
    if not dist.is_available():
        raise RunError("WORLD_SIZE > 1 asks for distributed training, but this torch build has no torch.distributed")
    use_cuda = torch.cuda.is_available() and device_type != "cpu"
    if use_cuda:
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return distributed_context()


def cleanup_distributed() -> None:
    """Tear the process group down (call once, at the very end of a torchrun script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def default_device(ctx: DistContext | None = None) -> torch.device:
    """The GPU of this process (`cuda:LOCAL_RANK`) where CUDA exists, else the CPU."""
    ctx = ctx or distributed_context()
    if torch.cuda.is_available():
        return torch.device("cuda", ctx.local_rank)
    return torch.device("cpu")


def parse_device(name: str | torch.device | None, *, defer_auto: bool = False) -> torch.device | None:
    """The one reading of a `--device` value: auto (or None), cpu, cuda or cuda:N.

    auto is this process's GPU where CUDA exists, else the CPU; with `defer_auto` it stays None so that the
    code that finally runs the job (a DDP rank, a Ray worker) picks its own device.
    """
    if name is None or name == "auto":
        return None if defer_auto else default_device()
    text = str(name)
    if text not in ("cpu", "cuda") and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise RunError(f"--device must be auto, cpu, cuda or cuda:N, got {text!r}")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise RunError(f"--device {text} was requested but torch sees no CUDA device; use --device cpu")
    return default_device() if text == "cuda" else torch.device(text)


def all_reduce_sum(values: Sequence[float | int], device: torch.device) -> list[float]:
    """Sum numbers over processes (no-op in a single process). float64 keeps integer counts exact."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [float(v) for v in values]
    # NCCL reduces only CUDA tensors, gloo only CPU tensors: follow the backend.
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    packed = torch.tensor([float(v) for v in values], dtype=torch.float64, device=on)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed.tolist()


def gather_rank_states(local: dict[str, Any], ctx: DistContext) -> list[dict[str, Any]]:
    """Every process's own state (RNG, loader position), in rank order, on every process."""
    if not ctx.enabled:
        return [local]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, local)
    return gathered
