"""SegmentGates (the gates after a BN that reads a concatenation, DenseNet): one multiply and one fused
backward for all segments must give what one TaylorGate per segment gives — the output, the input
gradient, and every importance accumulation the pruner uses (the gate's own, the collector's per-gate
squares and its summed gradients)."""
from __future__ import annotations

import pytest
import torch

from pyns.builder import SegmentGates
from pyns.gate import TaylorGate

WIDTHS = [3, 4, 2, 5]  # segment 1 fixed (None): passes unchanged


def _pair():
    ours = SegmentGates([(w, TaylorGate(w) if i != 1 else None) for i, w in enumerate(WIDTHS)])
    reference = [TaylorGate(w) if i != 1 else None for i, w in enumerate(WIDTHS)]
    generator = torch.Generator().manual_seed(0)
    for gate, ref in zip(ours.gates, reference):
        if ref is not None:
            z = (torch.rand(ref.num_channels, generator=generator) > 0.3).float()
            gate.z.copy_(z)
            ref.z.copy_(z)
    return ours, reference


def _reference_forward(reference, x):
    parts = torch.split(x, WIDTHS, 1)
    return torch.cat([g(p) if g is not None else p for g, p in zip(reference, parts)], 1)


@pytest.mark.parametrize("mode", ["own", "squares", "sum"])
def test_segment_gates_equal_one_gate_per_segment(mode):
    ours, reference = _pair()
    pairs = [(g, r) for g, r in zip(ours.gates, reference) if r is not None]
    views = []
    for gate, ref in pairs:  # the collector's buffers, one per gate pair
        if mode == "squares":
            a, b = torch.zeros(ref.num_channels, dtype=torch.float64), torch.zeros(ref.num_channels, dtype=torch.float64)
            gate.taylor_squares, ref.taylor_squares = a, b
            views.append((a, b))
        elif mode == "sum":
            a, b = torch.zeros(ref.num_channels, dtype=torch.float64), torch.zeros(ref.num_channels, dtype=torch.float64)
            gate.taylor_sum, ref.taylor_sum = a, b
            views.append((a, b))
    weight = torch.randn(1, sum(WIDTHS), 1, 1)
    for step in range(2):
        x = torch.randn(4, sum(WIDTHS), 5, 5)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), _reference_forward(reference, xb)
        torch.testing.assert_close(ya, yb, rtol=0, atol=0)
        ((ya * weight) ** 2).sum().backward()
        ((yb * weight) ** 2).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-6, atol=1e-6)
    for gate, ref in pairs:
        torch.testing.assert_close(gate.importance, ref.importance, rtol=1e-12, atol=0)
        assert int(gate.batches) == int(ref.batches) == (2 if mode != "squares" else 0)
    for a, b in views:
        assert b.abs().sum() > 0
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_segment_gates_without_grad_and_in_eval():
    ours, reference = _pair()
    x = torch.randn(2, sum(WIDTHS), 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), _reference_forward(reference, x), rtol=0, atol=0)
    with pytest.raises(Exception, match="channels"):
        ours(torch.randn(2, sum(WIDTHS) + 1, 3, 3))
