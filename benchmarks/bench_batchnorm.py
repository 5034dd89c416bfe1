"""Training-mode BatchNorm2d (+ the ReLU after it) on channels-last CPU tensors: torch's kernels vs pyns'.

Per case, one training forward and backward of BN -> ReLU, timed side by side in one process
(interleaved calls, medians): nn.BatchNorm2d followed by nn.ReLU(inplace=True), as torch runs it, against
pyns.batchnorm.RowsBatchNorm2d with the ReLU folded in (what the pruner trains; one module pair built by
use_rows_batchnorm). The widths are the ones a VGG11 pruning run at ratio 0.5 passes through
(benchmarks/bench_prune.py: the start widths, then odd ones), at batch 64.

    python benchmarks/bench_batchnorm.py [--threads T] [--repeat R]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from pyns.batchnorm import use_rows_batchnorm

# (channels, resolution): VGG11-CIFAR's layers at the start widths of ratio 0.5, then at widths a
# pruning run reaches (steps 6, 16 and 26 of bench_prune.py).
CASES = [(32, 32), (64, 16), (128, 8), (256, 4),
         (113, 8), (183, 4), (255, 2),
         (31, 32), (54, 16), (71, 8), (79, 4),
         (12, 32), (22, 16), (19, 8), (24, 2)]


def _pair(c: int) -> tuple[nn.Module, nn.Module]:
    torch_block = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True))
    pyns_block = use_rows_batchnorm(nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True)))
    return torch_block, pyns_block


def _step(block: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
    y = block(x)
    y.backward(grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=40, help="timed calls per implementation and case")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"BN + ReLU, training forward + backward, channels-last float32, batch {args.batch}, "
          f"{torch.get_num_threads()} threads; medians of {args.repeat} interleaved calls")
    print(f"{'C':>4} {'HxW':>6} {'torch ms':>9} {'pyns ms':>8} {'speed-up':>9}")
    ratios = []
    for c, r in CASES:
        x = torch.randn(args.batch, c, r, r).contiguous(memory_format=torch.channels_last).requires_grad_()
        grad = torch.randn(args.batch, c, r, r).contiguous(memory_format=torch.channels_last)
        blocks = _pair(c)
        times: list[list[float]] = [[], []]
        for _ in range(3):  # warm-up: first calls allocate
            for block in blocks:
                _step(block, x, grad)
        for _ in range(args.repeat):
            for index, block in enumerate(blocks):
                start = time.perf_counter()
                _step(block, x, grad)
                times[index].append(time.perf_counter() - start)
        t_torch, t_pyns = (statistics.median(t) for t in times)
        ratios.append(t_torch / t_pyns)
        print(f"{c:>4} {r:>3}x{r:<2} {1e3 * t_torch:>9.3f} {1e3 * t_pyns:>8.3f} {t_torch / t_pyns:>8.2f}x")
    print(f"geometric mean speed-up: {statistics.geometric_mean(ratios):.2f}x "
          f"(range {min(ratios):.2f}x to {max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
