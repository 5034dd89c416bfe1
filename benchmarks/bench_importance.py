"""Benchmark: which Taylor rule for tied widths ranks channels closer to the loss they really cost.

Channels joined by identity adds (ResNet18's stem / b1b / b2b, ...) pass through several gates. Two rules
score such a channel from the gates' per-minibatch dE/dz:

- per-gate (pyns' default, pyns.neuralscale.prune.importance): sum over gates of mean over minibatches
  of g^2;
- summed: mean over minibatches of (sum over gates of g)^2, the first-order estimate of removing the
  channel at every gate at once, squared.

The oracle is the paper's eq. (1) itself: for each channel, zero it at every gate of its class and
measure the loss change on each minibatch, (E - E|channel removed)^2 averaged over the minibatches. The
network is ResNet18 (CIFAR layout) at a small width trained briefly on scikit-learn's digits (32x32, 3
channels); importance is read over Q minibatches with the weights frozen, in train mode as the pruner
reads it. Reported: Spearman correlation with the oracle over the tied channels, and how many of the
oracle's k least important tied channels each rule also puts among its k least important.

    python benchmarks/bench_importance.py [--ratio 0.125] [--epochs 2] [--q 4] [--k 10]
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from pyns.arch import load
from pyns.channels import channel_map
from pyns.data.augment import BatchLoader
from pyns.data.datasets import load_dataset
from pyns.neuralscale.prune.importance import TaylorCollector, gates_by_symbol


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--ratio", type=float, default=0.125)
    parser.add_argument("--epochs", type=int, default=2, help="training epochs before measuring")
    parser.add_argument("--q", type=int, default=4, help="minibatches of importance (Q)")
    parser.add_argument("--k", type=int, default=10, help="size of the least-important set compared")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    arch = load(args.arch)
    data = load_dataset("digits", split="train", resolution=arch.resolution, channels=arch.network.in_channels)
    model = arch.build(arch.uniform_widths(args.ratio), gates=True)
    loader = BatchLoader(data, args.batch_size, train=True, augment=None, device="cpu", seed=args.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.5, weight_decay=5e-4)
    for gate in model.gates():
        gate.accumulate = False
    model.train()
    for _ in range(args.epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    cmap = channel_map(model.ir, model.widths)
    classes = cmap.symbol_classes()
    gates = gates_by_symbol(model)
    tied = [c for c in classes if sum(len(gates.get(s, [])) for s in c) > 1]
    batches = [batch for _, batch in zip(range(args.q), loader)]
    # Both rules from the same backward passes.
    collectors = {rule: TaylorCollector(model, tied, rule) for rule in ("summed", "per-gate")}
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        for collector in collectors.values():
            collector.end_minibatch()
    scores = {rule: torch.cat([c.importance(i) for i in range(len(tied))]) for rule, c in collectors.items()}
    for collector in collectors.values():
        collector.detach()

    oracle = []
    with torch.no_grad():
        base = [float(F.cross_entropy(model(x), y)) for x, y in batches]
        for members in tied:
            class_gates = [g for s in members for g in gates.get(s, [])]
            for channel in range(class_gates[0].num_channels):
                for g in class_gates:
                    g.z[channel] = 0.0
                deltas = [float(F.cross_entropy(model(x), y)) - e for (x, y), e in zip(batches, base)]
                for g in class_gates:
                    g.z[channel] = 1.0
                oracle.append(sum(d * d for d in deltas) / len(deltas))
    oracle_t = torch.tensor(oracle, dtype=torch.float64)

    def lowest(values: torch.Tensor) -> set[int]:
        return set(torch.argsort(values)[:args.k].tolist())

    truth = lowest(oracle_t)
    print(f"{arch.name} at width ratio {args.ratio}, {args.epochs} epochs on digits, Q = {args.q}: "
          f"{len(oracle)} tied channels in {len(tied)} classes ({', '.join('/'.join(c) for c in tied)})")
    for name, values in (("summed (sum g)^2", scores["summed"]), ("per-gate sum g^2", scores["per-gate"])):
        rho = spearmanr(values.numpy(), oracle_t.numpy()).statistic
        print(f"  {name:<18} Spearman vs oracle {rho:.3f}; {len(lowest(values) & truth)} of the oracle's "
              f"{args.k} least important also among its {args.k} least important")


if __name__ == "__main__":
    main()
