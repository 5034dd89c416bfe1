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

Accuracies are counted over samples (correct / total), never averaged over batches (a defect of the
reference code). Under torchrun (`WORLD_SIZE` > 1) the model is wrapped in DistributedDataParallel, the
counts are all-reduced and only rank 0 writes files.

The loaders follow `pyns.augment.BatchLoader`'s protocol: iterating yields `(x, y)` batches already on the
training device; `len()` is the number of batches; optional `state_dict()` / `load_state_dict()` make
mid-run resume exact; optional `device`, `rank` and `world_size` attributes are checked when present.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from pyns.errors import RunError
from pyns.runfiles import (
    append_jsonl,
    atomic_torch_save,
    atomic_write_json,
    capture_rng_state,
    compare_configs,
    load_config,
    restore_rng_state,
    save_config,
    write_jsonl,
)

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
_CHECKPOINT_FORMAT = "pyns-train-checkpoint"
_CHECKPOINT_VERSION = 1

# Changing these between the interrupted run and the resumed one cannot break exactness of what was
# already trained: `epochs` only moves the end point (milestones are absolute epochs, not fractions).
_RESUMABLE_CHANGES = ("recipe.epochs",)


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
    channels_last: bool = False  # NHWC memory layout, CUDA only (faster convs on tensor cores)
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


def _result_from_history(history: Sequence[EpochRecord], out_dir: Path | None) -> TrainResult:
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


# ----------------------------------------------------------------------------------------------------
# Distributed setup
# ----------------------------------------------------------------------------------------------------


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
    """Build sharded `pyns.augment.BatchLoader`s for `train`: per-process batch = recipe.batch_size / W.

    `augment` defaults to the data set's standard augmentation (`pyns.augment.default_augment`); pass None
    for none. The loader seed defaults to the recipe's seed.
    """
    from pyns.augment import BatchLoader, default_augment

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


def _all_reduce_sum(values: Sequence[float | int], device: torch.device) -> list[float]:
    """Sum numbers over processes (no-op in a single process). float64 keeps integer counts exact."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return [float(v) for v in values]
    # NCCL reduces only CUDA tensors, gloo only CPU tensors: follow the backend.
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    packed = torch.tensor([float(v) for v in values], dtype=torch.float64, device=on)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    return packed.tolist()


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


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    device = _model_device(model)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    total = 0
    try:
        for x, y in loader:
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, amp_dtype):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(dim=1) == y).sum()
            total += int(y.shape[0])
    finally:
        model.train(was_training)
    correct_all, loss_all, total_all = _all_reduce_sum([correct.item(), loss_sum.item(), total], device)
    if total_all == 0:
        raise RunError("the evaluation data yielded no samples; check the test set and the loader")
    return correct_all / total_all, loss_all / total_all


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------------


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (tensors on the CPU), refusing files that are not one."""
    target = Path(path)
    if not target.exists():
        raise RunError(f"there is no checkpoint at {target}")
    try:
        payload = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged or foreign files
        raise RunError(f"{target} could not be read as a pyns training checkpoint ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != _CHECKPOINT_FORMAT:
        raise RunError(f"{target} is not a pyns training checkpoint")
    if payload.get("version") != _CHECKPOINT_VERSION:
        raise RunError(
            f"{target} has checkpoint version {payload.get('version')}, this pyns reads version {_CHECKPOINT_VERSION}"
        )
    return payload


def _gather_rank_states(local: dict[str, Any], ctx: DistContext) -> list[dict[str, Any]]:
    """Every process's own state (RNG, loader position), in rank order, on every process."""
    if not ctx.enabled:
        return [local]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, local)
    return gathered


def _loader_state(loader: Any) -> Any:
    return loader.state_dict() if hasattr(loader, "state_dict") else None


def _load_loader_state(loader: Any, state: Any, which: str) -> None:
    if state is None:
        return
    if not hasattr(loader, "load_state_dict"):
        raise RunError(f"the checkpoint holds a {which} loader position but this {which} loader cannot restore one")
    loader.load_state_dict(state)


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


def _resolve_amp_dtype(recipe: TrainRecipe, device: torch.device) -> torch.dtype | None:
    if not recipe.amp:
        return None
    if device.type != "cuda":
        log.warning("mixed precision (amp) needs a CUDA device; training on %s in float32", device)
        return None
    if recipe.amp_dtype == "bfloat16" or (recipe.amp_dtype == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _resolve_device(train_loader: Any, model: nn.Module, ctx: DistContext) -> torch.device:
    loader_device = getattr(train_loader, "device", None)
    if loader_device is not None:
        return torch.device(loader_device)
    if ctx.enabled:
        return default_device(ctx)
    return _model_device(model)


def _check_loaders(train_loader: Any, test_loader: Any, ctx: DistContext, recipe: TrainRecipe) -> None:
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


class _Determinism:
    """Switch deterministic kernels on for the run and restore the previous global setting afterwards."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled = enabled
        self.device = device

    def __enter__(self) -> _Determinism:
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


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _open_tensorboard(folder: Path) -> Any:
    """A SummaryWriter, or None when tensorboard is not installed (it is optional)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(folder))


class _Progress:
    """tqdm over one epoch's batches when wanted and attached to a terminal; otherwise silent."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self.bar: Any = None

    def start(self, total: int, epoch: int, epochs: int) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

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
            from tqdm.auto import tqdm

            tqdm.write(line)


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
        out.mkdir(parents=True, exist_ok=True)
        for stale in (CHECKPOINT_FILE, BEST_MODEL_FILE, RESULT_FILE, METRICS_FILE):
            (out / stale).unlink(missing_ok=True)


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
    device = _resolve_device(train_loader, model, ctx)
    _check_loaders(train_loader, test_loader, ctx, recipe)
    _prepare_run_folder(out, resume, overwrite, ctx)

    raw = _unwrap(model)
    config = {
        "recipe": dataclasses.asdict(recipe),
        "world_size": ctx.world_size,
        "model": {"class": type(raw).__name__, "params": sum(p.numel() for p in raw.parameters())},
        "train_batches_per_epoch": len(train_loader),
    }
    if resume:
        # Every rank reads and judges the saved config, so that all of them stop on a mismatch (a rank
        # left waiting in a collective for one that raised would hang the job).
        _verify_config(out, config)
    if ctx.is_main:
        save_config(out, config, CONFIG_FILE)
    amp_dtype = _resolve_amp_dtype(recipe, device)
    channels_last = recipe.channels_last and device.type == "cuda"
    if recipe.channels_last and not channels_last:
        log.warning("channels_last only helps on CUDA; keeping the default layout on %s", device)

    with _Determinism(recipe.deterministic, device):
        if not resume:
            _seed_everything(recipe.seed + ctx.rank)  # distinct dropout masks per rank, reproducible
        raw.to(device)
        if channels_last:
            raw.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(
            raw.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(recipe.milestones), gamma=recipe.gamma)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        history: list[EpochRecord] = []
        if resume:
            history = _restore(out / CHECKPOINT_FILE, raw, optimizer, scheduler, scaler, train_loader, test_loader, ctx)
            if len(history) > recipe.epochs:
                raise RunError(f"the checkpoint already has {len(history)} epochs, more than the recipe's {recipe.epochs}")
            if ctx.is_main:
                write_jsonl(out / METRICS_FILE, [dataclasses.asdict(r) for r in history])  # drop lines past it

        step_model: nn.Module = raw
        if ctx.enabled:
            ids = [device.index] if device.type == "cuda" else None
            step_model = nn.parallel.DistributedDataParallel(raw, device_ids=ids)
        eval_model: nn.Module = raw
        if recipe.compile:
            step_model = torch.compile(step_model)
            eval_model = torch.compile(raw)

        runner = _EpochRunner(
            step_model, optimizer, scaler, amp_dtype, channels_last, device, log_every,
            tensorboard=_open_tensorboard(out / TENSORBOARD_DIR) if ctx.is_main else None,
            progress=_Progress(progress and ctx.is_main),
        )
        pending: tuple[dict[str, Any], EpochRecord, bool] | None = None  # finished epoch not yet on disk
        saved_epoch = len(history)
        try:
            for epoch_index in range(len(history), recipe.epochs):
                started = time.perf_counter()
                lr = optimizer.param_groups[0]["lr"]
                train_loss, train_acc = runner.train_epoch(train_loader, epoch_index, recipe.epochs)
                if ctx.enabled:
                    # Each rank updated BN running statistics on its own shard: adopt rank 0's everywhere so
                    # that evaluation and the checkpoint describe one model.
                    for buffer in raw.buffers():
                        dist.broadcast(buffer, src=0)
                test_acc, test_loss = evaluate(eval_model, test_loader, amp_dtype=amp_dtype, channels_last=channels_last)
                scheduler.step()
                record = EpochRecord(
                    epoch_index + 1, lr, train_loss, train_acc, test_loss, test_acc, time.perf_counter() - started
                )
                if not math.isfinite(train_loss):
                    raise RunError(
                        f"training diverged: the train loss is {train_loss} in epoch {record.epoch}",
                        hint="lower the learning rate; the checkpoint of the previous epoch is kept",
                    )
                improved = not history or test_acc > max(r.test_acc for r in history)
                history.append(record)
                payload = _checkpoint_payload(
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
                log.warning("interrupted: epoch %d is saved in %s; continue with resume=True", saved_epoch, out)
            raise
        finally:
            runner.close()

    result = _result_from_history(history, out)
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


def _checkpoint_payload(
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
        "ranks": _gather_rank_states(local, ctx),
        "history": [dataclasses.asdict(r) for r in history],
    }


def _restore(
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


class _EpochRunner:
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
        progress: _Progress,
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
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(self.device, self.amp_dtype):
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
        correct_all, loss_all, seen_all = _all_reduce_sum([correct.item(), loss_sum.item(), seen], self.device)
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
