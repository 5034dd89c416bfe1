"""The channel map on the torch importer's constructs: a concat's channels are its branches' spaces at
their offsets (shrunk == masked when a mixing layer reads it), and what cannot be followed exactly (a
shuffle, a LayerNorm) is reported approximate, never silently wrong; a BatchNorm on a concat's output is
followed by a gate per branch, so it shrinks exactly."""
from __future__ import annotations

import torch
from torch import nn

import pyns
from pyns.channels import channel_map, count_filters
from pyns.neuralscale.prune.shrink import shrink_network
from shrink_checks import randomise_bn, shrink_and_mask

INCEPTION = """
network incept(classes = 5, resolution = 9, in_channels = 3)
width a = 8, b = 6, c = 5, d = 4
body {
    conv(a, 3) bn relu
    concat {
        branch { conv(b, 1) bn relu }
        branch { }
        branch { conv(c, 3) bn relu }
    }
    TAIL
    gap flatten linear(classes)
}
"""


def _pair(tail: str, keep: dict[str, list[int]]):
    arch = pyns.loads(INCEPTION.replace("TAIL", tail))
    torch.manual_seed(0)
    full = arch.build(gates=True)
    randomise_bn(full, torch.Generator().manual_seed(1))
    small, report = shrink_and_mask(arch, full, keep)
    return arch, full.eval(), small.eval(), report


KEEP = {"a": [0, 2, 3, 7], "b": [1, 4, 5], "c": [0, 3]}


def test_concat_segments_are_the_branches_spaces_at_their_offsets():
    arch = pyns.loads(INCEPTION.replace("TAIL", "conv(d, 1)"))
    cmap = channel_map(arch.network, arch.defaults)
    (cid, segments), = cmap.composites.items()
    assert [s for s, _ in segments] == ["b", "a", "c"]  # the empty branch passes the input (space a)
    assert cmap.width(cid, arch.defaults) == 6 + 8 + 5
    # conv(d, 1) reads the concat: its input role is the composite
    conv = [n for n, r in cmap.layers.items() if r.get("out") == "d"][0]
    assert cmap.layers[conv]["in"] == cid
    # filters: producers of a, b, c, d (the linear's classes never change)
    assert count_filters(cmap, arch.defaults) == 8 + 6 + 5 + 4


def test_concat_into_a_conv_shrinks_exactly():
    _, full, small, report = _pair("conv(d, 1) bn relu", KEEP)
    assert report.exact, report
    x = torch.randn(3, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(small(x), full(x), rtol=1e-5, atol=1e-5)
    # the conv after the concat kept input channels b[1,4,5], then a[0,2,3,7] at offset 6, c[0,3] at 14
    old_w = [m for m in full.modules() if isinstance(m, nn.Conv2d)][-1].weight
    new_w = [m for m in small.modules() if isinstance(m, nn.Conv2d)][-1].weight
    torch.testing.assert_close(new_w, old_w[:, [1, 4, 5, 6, 8, 9, 13, 14, 17]])


def test_concat_into_a_batchnorm_is_gated_per_segment_and_exact():
    """DenseNet's BN right after a concat: SegmentGates after it mask each branch's channels again (a
    masked channel leaves the BN as its beta), so removing == masking, in train and eval mode."""
    _, full, small, report = _pair("bn relu conv(d, 1)", KEEP)
    assert report.exact, report
    segment_gates = [m for m in full.modules() if type(m).__name__ == "SegmentGates"]
    assert len(segment_gates) == 1 and [g.symbol for g in segment_gates[0].gates] == ["b", "a", "c"]
    x = torch.randn(3, 3, 9, 9)
    for train in (True, False):
        full.train(train)
        small.train(train)
        with torch.no_grad():
            torch.testing.assert_close(small(x), full(x), rtol=1e-5, atol=1e-5)


def test_aligned_slice_is_exact_and_shuffle_is_approximate():
    # slice(0, b) takes exactly the first branch (space b): exact
    _, full, small, report = _pair("slice(0, b) conv(d, 1)", KEEP)
    assert report.exact, report
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(small(x), full(x), rtol=1e-5, atol=1e-5)
    # widths 6 + 8 + 5 = 19 are odd: shuffle over a conv's output instead
    arch = pyns.loads(INCEPTION.replace("TAIL", "conv(d, 1) shuffle(2) conv(d, 1)"))
    cmap = channel_map(arch.network, arch.defaults)
    assert any(name.startswith("shuffle") for name in cmap.rerouted)
    full = arch.build(gates=True)
    _, _, report = shrink_network(full, {"d": [0, 1]})
    assert any(name.startswith("shuffle") for name in report.approximate)


def test_layernorm_channel_linear_and_scale_follow_their_spaces():
    text = """network cnx(classes = 3, resolution = 5, in_channels = 3)
    width a = 6, e = 10
    body {
        conv(a, 1)
        residual {
            conv(a, 3, groups = a) layernorm channel_linear(e) gelu channel_linear(a) scale
        }
        gap flatten linear(classes)
    }"""
    arch = pyns.loads(text)
    full = arch.build(gates=True)
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.1 * torch.randn_like(p))
    keep = {"e": [0, 2, 3, 5, 9]}  # only the MLP's hidden width: no LayerNorm on it
    small, report = shrink_and_mask(arch, full, keep)
    assert report.exact, report
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(x), full.eval()(x), rtol=1e-5, atol=1e-5)
    # pruning `a` goes through the LayerNorm, which normalises over all channels: approximate
    full2 = arch.build(gates=True)
    _, _, report = shrink_network(full2, {"a": [0, 1, 4]})
    assert any(name.startswith("layernorm") for name in report.approximate), report
