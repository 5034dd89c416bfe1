"""Channel spaces: which dimensions of a network's tensors carry the same channels, and how they prune.

A *space* is a set of channels made by one layer and carried on through the layers that keep the
channel index (BatchNorm, activations, pools, depthwise convs, the gated side of a squeeze-excite) until
a conv or linear layer mixes them into new channels. Each space has a width expression:

- a *symbol space*: the width is a bare searchable symbol (`c3`); every layer that produces `c3`
  produces the same space (its channels are pruned by the global ranking);
- a *derived space*: the width is any other expression of searchable symbols (MobileNetV2's expansion
  `6 * in`, EfficientNet's `make_divisible(6 * in)`, a squeeze-excite's reduced width `round(0.25 * in)`).
  Its id is the name of the layer that makes it (`inverted3.conv1`, or `<se layer>.reduced`). Its width
  follows the symbols, but *which* of its channels survive is its own choice: they are ranked within
  the space (by the space's own Taylor importance, or L1 norm for Li et al.);
- widths that depend on no searchable symbol (the input image, `classes`) never change: no space.

A width `M * s` (an integer M > 1 times a searchable symbol: the torch importer's per-group width of a
grouped conv, ResNeXt's `32 * layer1_0_conv1`) is the symbol space of `s` in M *blocks* of `s` channels
(`Space.blocks`): the channels of block b are b*s .. (b+1)*s - 1, and a grouped conv with g groups
(g divides M) reads and writes whole blocks. One unit of `s` removes one channel from every block, each
block its own least important one, so every conv group keeps the same size and its channels stay in
their group: the shrink of a grouped conv is then exact (pyns.neuralscale.prune.shrink).

Concatenations (the torch importer's DenseNet / Inception / ShuffleNet blocks) make no channels of their
own: their output is a *composite* whose id is the concat layer's name and whose channels are the
branches' spaces side by side (`ChannelMap.composites`: segments of (space or None, width) in order), so
a layer reading a concat's output indexes each branch's space at its offset. Slices that cut a composite
at segment boundaries select those segments exactly; a channel shuffle, or a slice across a segment
or of a plain space whose width changes, re-routes channels when widths change: such layers are listed
in `ChannelMap.rerouted` and a shrink through them is reported approximate. LayerNorm normalises over
all channels of its position, so removing channels changes the others' statistics where masking does
not: a LayerNorm on a changing space is in `rerouted` too.

Identity adds join the space of a residual's input with the space of its output: the joined spaces form
a *class* whose channels must be pruned together (ResNet's stem, b1b, b2b). `channel_map` computes all
of this from the IR at given widths (the widths decide which shortcuts exist, see `pin_shortcuts`), and
is the one place the builder (gate placement), the shrinker (index plans), the pruner (units, filters)
and the L1 baseline learn the channel structure from.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from pyns import ir
from pyns.dsl.expr import Const, evaluate
from pyns.space_tracer import SpaceTracer
# The records live in spaces.py and the walk in space_tracer.py; this module stays the one entry point.
from pyns.spaces import ChannelMap, Space

__all__ = ["ChannelMap", "Space", "channel_map", "count_filters", "pin_shortcuts", "residual_structure"]


def channel_map(network: ir.Network, widths: Mapping[str, int]) -> ChannelMap:
    """The channel spaces of `network` built at `widths` (completed with the defaults)."""
    env = {**network.defaults(), **widths}
    tracer = SpaceTracer(network, env)
    tracer.trace(network.layers, None)
    groups: dict[str, list[str]] = {}
    for sid in tracer.spaces:  # insertion order: order of first appearance in the network
        groups.setdefault(tracer.find(sid), []).append(sid)
    frozen = {sid for root, members in groups.items() if root in tracer.frozen_roots for sid in members}
    return ChannelMap(tracer.spaces, tracer.layers, tracer.flatten_hw, tracer.grouped,
                      [tuple(m) for m in groups.values()], frozen, tracer.composites, tracer.rerouted,
                      tracer.composite_layers, tracer.gated_composites)


def count_filters(cmap: ChannelMap, widths: Mapping[str, int]) -> int:
    """Filters of the searchable widths: the output channels of every conv / linear layer whose output
    width is a searchable symbol (projection shortcuts included), i.e. what the paper and the reference
    code count as "the total neurons (filters) of the network". A width tied to others by an identity
    add counts once per producing layer; derived widths (expansions, SE) are not counted."""
    own = sum(len(space.layers) * int(widths[space.symbol]) * space.blocks
              for space in cmap.spaces.values() if space.symbol is not None)
    on_concats = sum(len(layers) * int(widths[cmap.spaces[sid].symbol]) * cmap.spaces[sid].blocks
                     for cid, layers in cmap.composite_layers.items() for sid in cmap.segments(cid)
                     if cmap.spaces[sid].symbol is not None)
    return own + on_concats


def residual_structure(network: ir.Network, widths: Mapping[str, int]) -> dict[str, bool]:
    """Per residual block whose shortcut depends on the widths: whether it projects (mode 'project')
    or skips the add (mode 'none') at these widths."""
    env = {**network.defaults(), **widths}
    out: dict[str, bool] = {}

    def visit(nodes: list[ir.Node]) -> None:
        for node in nodes:
            if isinstance(node, ir.Residual):
                if not isinstance(node.project_when, Const):
                    out[node.name] = bool(evaluate(node.project_when, env))
                visit(node.body)
                visit(node.shortcut)
            elif isinstance(node, ir.Concat):
                for branch in node.branches:
                    visit(branch)

    visit(network.layers)
    return out


def pin_shortcuts(network: ir.Network, widths: Mapping[str, int]) -> ir.Network:
    """A copy of `network` whose shortcut structure is frozen at `widths`: every residual that projects
    (or, for mode 'none', skips its add) there always does, whatever the widths become.

    Pruning uses it so that a projection shortcut is not dropped when two widths happen to become equal
    mid-run: the network keeps its architecture for the whole search (as a masked network does), its
    tied classes never merge, and the cost engine counts the projection that is still trained.
    """
    env = {**network.defaults(), **widths}

    def pin(nodes: list[ir.Node]) -> list[ir.Node]:
        out: list[ir.Node] = []
        for node in nodes:
            if isinstance(node, ir.Residual):
                node = dataclasses.replace(node, body=pin(node.body), shortcut=pin(node.shortcut),
                                           project_when=Const(int(bool(evaluate(node.project_when, env)))))
            elif isinstance(node, ir.Concat):
                node = dataclasses.replace(node, branches=[pin(b) for b in node.branches])
            out.append(node)
        return out

    return dataclasses.replace(network, layers=pin(network.layers))
