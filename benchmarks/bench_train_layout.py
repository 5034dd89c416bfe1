"""Final training on the CPU: the default NCHW layout vs `channels_last` (NHWC, pyns' BatchNorm).

One training step (forward, backward, SGD with the paper's momentum and weight decay) at the recipe's
batch of 128 on CIFAR-sized input, per network, timed side by side in one process (interleaved steps,
medians): the model as `pyns.train` runs it by default (NCHW, torch's BatchNorm) against the same model
with `TrainRecipe(channels_last=True)` (NHWC memory, the BNs switched by pyns.batchnorm.rows_batchnorm,
the ReLU after each folded in). The networks: VGG11 at the widths `pyns scale vgg11 --params 0.58M`
gives (uniform, multiples of 16), VGG11 at widths a NeuralScale profile gives (odd ones, from a pruning
run), and ResNet18 at width ratio 0.5.

    python benchmarks/bench_train_layout.py [--threads T] [--steps N] [--batch B]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from pyns.arch import load
from pyns.batchnorm import rows_batchnorm

CASES = [
    ("vgg11 uniform 0.58M params", "vgg11", None),
    ("vgg11 profile widths", "vgg11", {"c1": 31, "c2": 54, "c3": 69, "c4": 71, "c5": 72, "c6": 79, "c7": 74,
                                       "c8": 222}),
    ("resnet18 ratio 0.5", "resnet18", 0.5),
]


def _widths(arch, spec):
    if spec is None:
        return arch.scale(params=580_000).widths
    if isinstance(spec, float):
        return arch.uniform_widths(spec)
    return spec


def _stepper(model, channels_last: bool, batch: int, resolution: int):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5, weight_decay=5e-4)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, resolution, resolution, generator=generator).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), generator=generator)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per layout and network")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"one training step, batch {args.batch}, {torch.get_num_threads()} threads, medians of {args.steps} "
          "interleaved steps")
    print(f"{'network':<28} {'widths':<44} {'NCHW ms':>8} {'NHWC ms':>8} {'speed-up':>9}")
    for name, arch_name, spec in CASES:
        arch = load(arch_name)
        widths = _widths(arch, spec)
        torch.manual_seed(0)
        base = arch.build(widths)  # what `pyns train` trains: no gates
        nchw = _stepper(copy.deepcopy(base), False, args.batch, arch.resolution)
        with rows_batchnorm(copy.deepcopy(base)) as switched:
            nhwc = _stepper(switched, True, args.batch, arch.resolution)
            times: list[list[float]] = [[], []]
            for _ in range(2):  # warm-up: first steps allocate and pick kernels
                nchw(), nhwc()
            for _ in range(args.steps):
                for index, step in enumerate((nchw, nhwc)):
                    start = time.perf_counter()
                    step()
                    times[index].append(time.perf_counter() - start)
        a, b = (statistics.median(t) for t in times)
        text = ",".join(str(widths[k]) for k in list(widths)[:8])
        print(f"{name:<28} {text:<44} {1e3 * a:>8.1f} {1e3 * b:>8.1f} {a / b:>8.2f}x")


if __name__ == "__main__":
    main()
