"""Pure-Python cost oracle: walks the IR with concrete widths and counts with Python integers.

Deliberately shares no formula code with pyns.cost.formulas / the C++ program, so tests comparing the
two catch mistakes in either.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from pyns import ir
from pyns.dsl.expr import evaluate


@dataclass
class LayerCost:
    name: str
    kind: str
    shape: str
    params: int
    macs: int


def count_layers(network: ir.Network, widths: Mapping[str, int]) -> list[LayerCost]:
    env = dict(network.defaults())
    env.update(widths)
    rows: list[LayerCost] = []
    for layer, _ in ir.walk(network.layers, active=env):
        if isinstance(layer, ir.Conv):
            cin, cout, groups = (int(evaluate(e, env)) for e in (layer.in_ch, layer.out_ch, layer.groups))
            w = layer.kernel * layer.kernel * (cin // groups) * cout
            ho, wo = layer.out_hw
            rows.append(LayerCost(layer.name, "conv", f"{cin}->{cout} k{layer.kernel} s{layer.stride} "
                                  f"{layer.in_hw[0]}x{layer.in_hw[1]}->{ho}x{wo}"
                                  + (f" g{groups}" if groups > 1 else ""),
                                  w + (cout if layer.bias else 0), w * ho * wo))
        elif isinstance(layer, ir.BatchNorm):
            c = int(evaluate(layer.channels, env))
            rows.append(LayerCost(layer.name, "bn", f"{c}", 2 * c, 0))
        elif isinstance(layer, ir.Linear):
            i, o = int(evaluate(layer.in_features, env)), int(evaluate(layer.out_features, env))
            rows.append(LayerCost(layer.name, "linear", f"{i}->{o}", i * o + (o if layer.bias else 0), i * o))
        elif isinstance(layer, ir.LayerNorm):
            c = int(evaluate(layer.channels, env))
            rows.append(LayerCost(layer.name, "layernorm", f"{c}", c + c, 0))
        elif isinstance(layer, ir.ChannelLinear):
            i, o = int(evaluate(layer.in_ch, env)), int(evaluate(layer.out_ch, env))
            positions = layer.hw[0] * layer.hw[1]
            rows.append(LayerCost(layer.name, "channel_linear", f"{i}->{o} at {layer.hw[0]}x{layer.hw[1]}",
                                  i * o + (o if layer.bias else 0), i * o * positions))
        elif isinstance(layer, ir.Scale):
            c = int(evaluate(layer.channels, env))
            rows.append(LayerCost(layer.name, "scale", f"{c}", c, 0))
        elif isinstance(layer, ir.SqueezeExcite):
            c, r = int(evaluate(layer.channels, env)), int(evaluate(layer.reduced, env))
            norm = 2 * r if layer.bn else 0  # BN gamma, beta on the reduced channels
            rows.append(LayerCost(layer.name, "se", f"{c}->{r}->{c}" + (" bn" if layer.bn else ""),
                                  c * r + r + r * c + c + norm, 2 * c * r))
    return rows


def count(network: ir.Network, widths: Mapping[str, int]) -> tuple[int, int]:
    rows = count_layers(network, widths)
    return sum(r.params for r in rows), sum(r.macs for r in rows)
