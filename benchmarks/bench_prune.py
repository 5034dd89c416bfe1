"""Benchmark: a short pruning run with physical shrinking vs the same run with masking only.

Both runs use the same architecture, data, seed and schedule; the only difference is `mode`. The masked
run trains the full-width network for the whole search (the NeuralScale reference code's way); the
shrinking run rebuilds the network smaller at every prune step. Masking channel c at every gate of its
width is the same function as removing it, so the two trajectories must agree up to float rounding
(different channel counts change the summation order inside the convolutions).

Defaults: VGG11 (CIFAR) at width ratio 0.5 on synthetic 32x32 data, one warm-up epoch of 32 minibatches,
then a prune step every 8 minibatches removing 44 of the 1376 units until 95% are gone (30 steps):
about 270 minibatches per run, a few minutes on 2 CPU cores. Checkpoints are written only at epoch ends
of the warm-up and at the end, so the timings measure training. Run:

    python benchmarks/bench_prune.py [--device cuda] [--ratio 0.5] [--every 8] [--units 44] ...
"""
from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch

from pyns.arch import load
from pyns.data import load_dataset
from pyns.prune.run import prune
from pyns.prune.schedule import PruneConfig


def _compare(shrunk: list[dict], masked: list[dict]) -> dict:
    """Where the two trajectories agree: widths step by step, and the loss difference while they do."""
    same = 0
    for a, b in zip(shrunk, masked):
        if a["widths"] != b["widths"]:
            break
        same += 1
    loss_diff = max((abs(a["loss"] - b["loss"]) / max(abs(b["loss"]), 1e-12)
                     for a, b in zip(shrunk[:same], masked[:same])), default=0.0)
    return {"steps_shrunk": len(shrunk), "steps_masked": len(masked), "identical_widths": same,
            "max_rel_loss_diff": loss_diff,
            "params_equal": [r["params"] for r in shrunk[:same]] == [r["params"] for r in masked[:same]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vgg11")
    parser.add_argument("--ratio", type=float, default=0.5, help="start at this uniform width ratio")
    parser.add_argument("--samples", type=int, default=2048, help="synthetic training images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1, help="warm-up epochs")
    parser.add_argument("--every", type=int, default=8, help="minibatches per prune step (Q)")
    parser.add_argument("--units", type=int, default=44, help="units removed per prune step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    arch = load(args.arch)
    widths = arch.uniform_widths(args.ratio)
    data = load_dataset("synthetic", split="train", resolution=arch.resolution, channels=arch.network.in_channels,
                        num_samples=args.samples, num_classes=10, seed=args.seed)
    config = PruneConfig(warmup_epochs=args.warmup, batch_size=args.batch_size, prune_every=args.every,
                         units_per_step=args.units, stop_at_min_width=False, augment=False, seed=args.seed,
                         checkpoint_every=10**6)
    start = arch.count(widths)
    print(f"{arch.name} at width ratio {args.ratio}: {start.params:,} params, {start.macs:,} MACs; "
          f"{len(data)} synthetic {arch.resolution}x{arch.resolution} images, batch {args.batch_size}, "
          f"Q={args.every}, {args.units} units/step, device {args.device}, {torch.get_num_threads()} threads")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("shrink", "masked"):
            started = time.perf_counter()
            result = prune(arch, data, config, Path(tmp) / mode, mode=mode, device=args.device, widths=widths)
            wall = time.perf_counter() - started
            results[mode] = (result, wall)

    print()
    print(f"{'mode':<8} {'steps':>5} {'minibatches':>11} {'wall s':>8} {'train s':>8} {'final params':>13} "
          f"{'final MACs':>12}")
    for mode, (result, wall) in results.items():
        minibatches = result.rows[-1]["minibatch"] if result.rows else 0
        print(f"{mode:<8} {result.steps:>5} {minibatches:>11} {wall:>8.1f} {result.seconds:>8.1f} "
              f"{result.params:>13,} {result.macs:>12,}")
    (shrunk, shrink_wall), (masked, masked_wall) = results["shrink"], results["masked"]
    print(f"\nspeed-up of shrinking over masking: {masked_wall / shrink_wall:.2f}x wall "
          f"({masked.seconds / shrunk.seconds:.2f}x training time)")

    # Time of the pruning phase alone, from the rows' cumulative training time.
    def pruning_time(rows: list[dict]) -> float:
        return rows[-1]["time_s"] - rows[0]["time_s"] if len(rows) > 1 else math.nan

    print(f"pruning phase (step 1 to the last step): shrink {pruning_time(shrunk.rows):.1f} s, "
          f"masked {pruning_time(masked.rows):.1f} s, ratio "
          f"{pruning_time(masked.rows) / pruning_time(shrunk.rows):.2f}x")
    report = _compare(shrunk.rows, masked.rows)
    print(f"trajectories: {report['identical_widths']} of {report['steps_shrunk']} steps with identical widths "
          f"(masked run: {report['steps_masked']} steps); params equal on those: {report['params_equal']}; "
          f"largest relative loss difference there: {report['max_rel_loss_diff']:.2e}")


if __name__ == "__main__":
    main()
