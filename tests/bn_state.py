"""Random BatchNorm state for the shrink-vs-mask tests: a channel that leaks through a BN (its beta, its
running mean) shows only when every BN's statistics and affine terms differ per channel."""
from __future__ import annotations

import torch
from torch import nn


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
