"""Helpers of the shrink-vs-mask tests: random BatchNorm state (a channel that leaks through a BN, its beta
or its running mean, shows only when every BN's statistics and affine terms differ per channel), and one
shrink of a gated network checked against the cost engine and paired with the masked original."""
from __future__ import annotations

import torch
from torch import nn

from pyns.neuralscale.prune.shrink import mask_network, shrink_network


def randomise_bn(model: nn.Module, generator: torch.Generator) -> None:
    """Running mean, running variance (in [0.5, 1.5)), weight and bias of every BatchNorm, random."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                n, stats, affine = m.num_features, m.running_mean.dtype, m.weight.dtype
                m.running_mean.copy_(torch.randn(n, generator=generator, dtype=stats))
                m.running_var.copy_(torch.rand(n, generator=generator, dtype=stats) + 0.5)
                m.weight.copy_(torch.randn(n, generator=generator, dtype=affine))
                m.bias.copy_(torch.randn(n, generator=generator, dtype=affine))


def shrink_and_mask(arch, full: nn.Module, keep):
    """Shrink `full` (a gated build of `arch`) to `keep`, assert the shrunk module has the params the cost
    engine counts at its widths, then mask `full` to the same channels; returns (small, report)."""
    small, _, report = shrink_network(full, keep)
    assert sum(p.numel() for p in small.parameters()) == arch.count(small.widths).params
    mask_network(full, keep)
    return small, report
