"""Cost engine speed: one C++ cost-program evaluation vs `Arch.count()` (the public call, target < 2.5 µs,
issue 13) vs the pure-Python oracle vs building the torch module and summing numel, side by side in one
run (issue 2).

    python benchmarks/bench_cost.py
"""
from __future__ import annotations

import time
import timeit

import numpy as np

from pyns.arch import load
from pyns.cost import oracle


def best_of(fn, number: int, repeat: int = 5) -> float:
    """Seconds per call: the minimum over repeats, the least noisy estimate on a shared machine."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def main() -> None:
    rows = []
    for name in ("resnet50", "efficientnet_b0", "resnet18", "vgg11"):
        arch = load(name)
        network, program, _ = arch.compiled()
        vec = arch.vector()
        widths = arch.defaults
        cpp = best_of(lambda: program.evaluate(vec), 20_000)
        api = best_of(lambda: arch.count(widths), 20_000)
        py = best_of(lambda: oracle.count(network, widths), 50)
        build = best_of(lambda: sum(p.numel() for p in arch.build(widths).parameters()), 1, repeat=3)
        batch = np.repeat(vec[None, :], 10_000, axis=0)
        batched = best_of(lambda: program.evaluate_batch(batch), 3) / 10_000
        rows.append((name, program.n_instructions, cpp, batched, api, py, build))
    print(f"{'arch':<16} {'instr':>6} {'C++ eval':>10} {'C++ batch':>10} {'Arch.count':>11} {'count/C++':>10} "
          f"{'oracle':>10} {'build+numel':>12} {'oracle/C++':>11} {'build/C++':>11}")
    for name, n, cpp, batched, api, py, build in rows:
        print(f"{name:<16} {n:>6} {cpp * 1e6:>8.2f}µs {batched * 1e6:>8.3f}µs {api * 1e6:>9.2f}µs {api / cpp:>9.2f}x "
              f"{py * 1e6:>8.0f}µs {build * 1e3:>10.1f}ms {py / cpp:>10.0f}x {build / cpp:>10.0f}x")
    print(f"(measured {time.strftime('%Y-%m-%d')}; minimum over repeats; 'C++ batch' is per width vector "
          "in a 10,000-vector call)")


if __name__ == "__main__":
    main()
