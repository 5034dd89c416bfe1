"""Inference latency measured the way the NeuralScale paper does (SPEC §5 "Latency").

Batch of 100 images, 20 warm-up batches that are not timed (they absorb cuDNN autotuning, allocator
growth and lazy initialisation), then the mean over the next 80 batches. On CUDA every timed batch is
bracketed by `torch.cuda.synchronize()`, otherwise the host would time only the kernel launches.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pyns.errors import RunError

__all__ = ["LatencyResult", "measure_latency"]

PAPER_BATCH_SIZE = 100
PAPER_WARMUP = 20
PAPER_ITERS = 80


@dataclass(frozen=True)
class LatencyResult:
    """Forward-pass time of one batch, over `iters` timed batches after `warmup` untimed ones."""

    ms_per_batch: float  # mean over the timed batches
    std_ms: float  # sample standard deviation over the timed batches (0 for a single batch)
    images_per_s: float  # batch_size / mean batch time
    batch_size: int
    warmup: int
    iters: int
    device: str
    threads: int  # torch CPU threads in use (CPU timings depend on it)

    @property
    def std(self) -> float:
        """Alias of `std_ms`."""
        return self.std_ms

    def summary(self) -> str:
        return (
            f"{self.ms_per_batch:.2f} ± {self.std_ms:.2f} ms per batch of {self.batch_size} on {self.device} "
            f"({self.images_per_s:.0f} images/s; mean of {self.iters} batches after {self.warmup} warm-up)"
        )


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    device: torch.device | str = "cpu",
    batch_size: int = PAPER_BATCH_SIZE,
    warmup: int = PAPER_WARMUP,
    iters: int = PAPER_ITERS,
    *,
    channels_last: bool = False,
    dtype: torch.dtype = torch.float32,
) -> LatencyResult:
    """Time `model` in eval mode on random inputs of shape (batch_size, *input_shape).

    `input_shape` is one image's (channels, height, width). The model is moved to `device` (it stays
    there) and its train/eval mode is restored afterwards. Smaller `warmup`/`iters` are for tests only:
    the paper's numbers use the defaults.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise RunError(f"input_shape must be one image's (channels, height, width), got {tuple(input_shape)}")
    if batch_size < 1 or warmup < 0 or iters < 1:
        raise RunError(
            f"latency needs batch_size >= 1, warmup >= 0 and iters >= 1, got {batch_size}, {warmup}, {iters}"
        )
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    was_training = model.training
    model.to(device)
    model.eval()
    # A dedicated generator: measuring latency must not move the global RNG of a training script.
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn((batch_size, *shape), generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        model.to(memory_format=torch.channels_last)
    times_ms: list[float] = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            _synchronize(device)
            for _ in range(iters):
                start = time.perf_counter()
                model(x)
                _synchronize(device)
                times_ms.append((time.perf_counter() - start) * 1e3)
    finally:
        model.train(was_training)
    mean_ms = statistics.fmean(times_ms)
    std_ms = statistics.stdev(times_ms) if len(times_ms) > 1 else 0.0
    return LatencyResult(
        ms_per_batch=mean_ms,
        std_ms=std_ms,
        images_per_s=batch_size / (mean_ms / 1e3),
        batch_size=batch_size,
        warmup=warmup,
        iters=iters,
        device=str(device),
        threads=torch.get_num_threads(),
    )
