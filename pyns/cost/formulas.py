"""Symbolic cost of each counted layer: (params, MACs) as Exprs over the width symbols.

These formulas are what the C++ cost program evaluates. The oracle (pyns.cost.oracle) recomputes the same
numbers independently from concrete integers, so a wrong formula here shows up as a test failure.
"""
from __future__ import annotations

from pyns import ir
from pyns.dsl.expr import Const, Expr, op


def in_per_group(conv: ir.Conv) -> Expr:
    if conv.groups == conv.in_ch:
        return Const(1)  # depthwise: one input channel per filter, whatever the width
    return op("floordiv", conv.in_ch, conv.groups)


def layer_cost(layer: ir.Node) -> tuple[Expr, Expr]:
    """(params, MACs) of one leaf layer; layers that SPEC §3 does not count give (0, 0)."""
    if isinstance(layer, ir.Conv):
        kernel = Const(layer.kernel * layer.kernel)
        weights = op("mul", op("mul", kernel, in_per_group(layer)), layer.out_ch)
        params = op("add", weights, layer.out_ch) if layer.bias else weights
        h, w = layer.out_hw
        return params, op("mul", weights, Const(h * w))
    if isinstance(layer, ir.BatchNorm):
        return op("mul", Const(2), layer.channels), Const(0)  # gamma and beta
    if isinstance(layer, ir.Linear):
        weights = op("mul", layer.in_features, layer.out_features)
        params = op("add", weights, layer.out_features) if layer.bias else weights
        return params, weights
    if isinstance(layer, ir.SqueezeExcite):
        # Two 1x1 convs with bias on a 1x1 map: C->R and R->C.
        weights = op("mul", Const(2), op("mul", layer.channels, layer.reduced))
        params = op("add", op("add", weights, layer.reduced), layer.channels)
        if layer.bn:  # gamma and beta of the BatchNorm on the reduced channels
            params = op("add", params, op("mul", Const(2), layer.reduced))
        return params, weights
    if isinstance(layer, ir.LayerNorm):
        return op("mul", Const(2), layer.channels), Const(0)  # weight and bias per channel
    if isinstance(layer, ir.ChannelLinear):
        weights = op("mul", layer.in_ch, layer.out_ch)
        params = op("add", weights, layer.out_ch) if layer.bias else weights
        h, w = layer.hw
        return params, op("mul", weights, Const(h * w))
    if isinstance(layer, ir.Scale):
        return layer.channels, Const(0)
    return Const(0), Const(0)


def counted_layers(network: ir.Network) -> list[tuple[ir.Node, Expr, Expr, Expr]]:
    """Every layer that has a cost, with (multiplicity, params, MACs); shortcut convs carry a 0/1 condition."""
    out = []
    for layer, times in ir.walk(network.layers):
        if isinstance(layer, ir.COUNTED):
            params, macs = layer_cost(layer)
            out.append((layer, times, params, macs))
    return out
