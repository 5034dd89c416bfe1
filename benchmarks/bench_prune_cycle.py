"""Benchmark: one prune cycle (Q training minibatches + one prune step) in pyns vs Torch-Pruning.

pyns: the real `prune()` loop in shrink mode (gated network, Taylor importance collected by the fused
gate backward, global ranking, physical shrink that carries weights, BN statistics and SGD momentum
over). Torch-Pruning (`pip install torch-pruning`; benchmark-only, never a pyns dependency): the same
pyns-built network without gates, the same data loader and SGD settings, `GroupTaylorImportance` with
`MetaPruner(global_pruning=True)` removing about the same number of channels per step, then a new
SGD optimizer (Torch-Pruning replaces the pruned parameters and keeps no optimizer state). Both start
from the same widths; a cycle's time is the wall time between two consecutive prune steps (so the
first cycle, which includes building, is not counted); the median over cycles is reported, for each
library alternately, best of `--repeats` runs.

    python benchmarks/bench_prune_cycle.py [--arch vgg11 resnet18] [--ratio 0.5] [--every 10] [--units 32]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pyns.arch import load
from pyns.data.augment import BatchLoader
from pyns.data.datasets import load_dataset
from pyns.neuralscale.prune.run import prune
from pyns.neuralscale.prune.schedule import PruneConfig


def _stamp() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _cycles(stamps: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, CPU) seconds between consecutive stamps, the first interval (which builds) left out."""
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps[1:], stamps[2:])]


def pyns_cycles(arch, widths, data, args) -> list[tuple[float, float]]:
    stamps: list[tuple[float, float]] = []

    def callback(state, model):
        if state.since_prune == 0 and state.step > len(stamps) - 1:
            stamps.append(_stamp())

    config = PruneConfig(warmup_epochs=0, batch_size=args.batch_size, prune_every=args.every,
                         units_per_step=args.units, stop_at_min_width=False, augment=False, seed=args.seed,
                         checkpoint_interval_s=1e9, stop_fraction=0.99)
    with tempfile.TemporaryDirectory() as tmp:
        stamps.append(_stamp())
        try:
            prune(arch, data, config, Path(tmp) / "run", widths=widths, callback=_stop_after(callback, args.cycles))
        except _Enough:
            pass
    return _cycles(stamps)


class _Enough(Exception):
    pass


def _stop_after(callback, cycles: int):
    def wrapped(state, model):
        callback(state, model)
        if state.step >= cycles + 1 and state.since_prune == 0:
            raise _Enough
    return wrapped


def torch_pruning_cycles(arch, widths, data, args) -> list[tuple[float, float]]:
    import torch_pruning as tp

    torch.manual_seed(args.seed)
    model = arch.build(widths)
    example = torch.randn(2, arch.network.in_channels, arch.resolution, arch.resolution)
    classifier = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))][-1]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m is not classifier]
    channels = sum(m.out_channels for m in convs)
    steps = args.cycles + 1
    # A linear schedule of `steps` steps to this ratio removes about `units` channels per step.
    ratio = min(0.9, steps * args.units / channels)
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupTaylorImportance(),
                                  global_pruning=True, pruning_ratio=ratio, iterative_steps=steps,
                                  ignored_layers=[classifier])

    def optimizer_for(m):
        return torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.5, weight_decay=5e-4)

    optimizer = optimizer_for(model)
    loader = BatchLoader(data, args.batch_size, train=True, augment=None, device="cpu", seed=args.seed)
    stamps = [_stamp()]
    seen = 0
    while len(stamps) < steps + 1:
        for x, y in loader:
            model.train()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += 1
            if seen % args.every == 0:
                pruner.step()  # Taylor importance from the last minibatch's gradients, then prune
                optimizer = optimizer_for(model)
                stamps.append(_stamp())
                if len(stamps) >= steps + 1:
                    break
    return _cycles(stamps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", default=["vgg11", "resnet18"])
    parser.add_argument("--ratio", type=float, default=0.5, help="start at this uniform width ratio")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--every", type=int, default=10, help="minibatches per prune cycle (Q)")
    parser.add_argument("--units", type=int, default=32, help="channels removed per prune step")
    parser.add_argument("--cycles", type=int, default=4, help="timed cycles per run")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per library; the best counts")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # the one-time torch._dynamo import, untimed
    print(f"one prune cycle = {args.every} minibatches of {args.batch_size} + one step removing ~{args.units} "
          f"channels; median over {args.cycles} cycles, best of {args.repeats} runs, {torch.get_num_threads()} threads")
    for name in args.arch:
        arch = load(name)
        widths = arch.uniform_widths(args.ratio)
        samples = args.batch_size * args.every * (args.cycles + 2)
        data = load_dataset("synthetic", split="train", resolution=arch.resolution,
                            channels=arch.network.in_channels, num_samples=samples, num_classes=10, seed=args.seed)
        best = {"pyns": [float("inf")] * 2, "torch-pruning": [float("inf")] * 2}  # [wall, CPU]
        load_before = _load()
        for _ in range(args.repeats):
            for library, run in (("pyns", pyns_cycles), ("torch-pruning", torch_pruning_cycles)):
                cycles = run(arch, widths, data, args)
                for k in range(2):
                    best[library][k] = min(best[library][k], statistics.median(c[k] for c in cycles))
        (p_wall, p_cpu), (t_wall, t_cpu) = best["pyns"], best["torch-pruning"]
        print(f"{name} at width ratio {args.ratio} ({arch.count(widths).params:,} params; load average {load_before} "
              f"/ {_load()}): pyns {p_wall:.3f} s wall / {p_cpu:.3f} s CPU, Torch-Pruning {t_wall:.3f} s / "
              f"{t_cpu:.3f} s per cycle: pyns/Torch-Pruning = {p_wall / t_wall:.2f}x wall, {p_cpu / t_cpu:.2f}x CPU")


def _load() -> str:
    """The 1-minute load average (a shared machine's other work inflates wall times, not CPU times)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "n/a"


if __name__ == "__main__":
    main()
