"""The smallest width each tied group may be pruned to: its declared floor, raised until the network builds.

A group's declared floor is `max(min_width, [min = N] of its symbols)`. That is not always enough: a
layer whose width is derived from a pruned one can reach 0 first (digits_effnet's squeeze-excite has
`round(0.25 * c2)` channels, 0 at c2 = 1; the builder refuses it, so a prune step to c2 = 1 would crash the
run). `unit_floors` raises each group's floor until every layer width of the network (conv, BN, linear,
pool, squeeze-excite, flatten) is >= 1 with every group at its floor at once, which is the binding case
because layer widths grow with the widths they derive from.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from pyns import ir
from pyns.dsl.expr import Expr, evaluate, symbols

__all__ = ["layer_width_exprs", "unit_floors"]


def layer_width_exprs(nodes: Sequence[ir.Node]) -> Iterator[Expr]:
    """Every channel-count expression the builder requires to be >= 1 (shortcut layers included)."""
    for node in nodes:
        if isinstance(node, ir.Residual):
            yield from layer_width_exprs(node.body)
            yield from layer_width_exprs(node.shortcut)
        elif isinstance(node, ir.Conv):
            yield from (node.in_ch, node.out_ch, node.groups)
        elif isinstance(node, (ir.BatchNorm, ir.Pool)):
            yield node.channels
        elif isinstance(node, ir.SqueezeExcite):
            yield from (node.channels, node.reduced)
        elif isinstance(node, ir.Flatten):
            yield from (node.channels, node.features)
        elif isinstance(node, ir.Linear):
            yield from (node.in_features, node.out_features)


def unit_floors(network: ir.Network, groups: Sequence[Sequence[str]], widths: Mapping[str, int],
                declared: Sequence[int]) -> list[int]:
    """Per group, the smallest width at which the network still builds (never above its current width).

    `widths`: the current width of every symbol (searchable and fixed); `declared`: each group's
    declared floor. A group whose floor reaches its current width simply cannot shrink further.
    """
    floors = list(declared)
    owner = {symbol: index for index, group in enumerate(groups) for symbol in group}
    exprs = [(e, {owner[s] for s in symbols(e) if s in owner}) for e in layer_width_exprs(network.layers)]
    exprs = [(e, owners) for e, owners in exprs if owners]  # fixed-width layers do not depend on pruning
    while True:
        env = dict(widths)
        for index, group in enumerate(groups):
            for symbol in group:
                env[symbol] = min(floors[index], widths[symbol])
        raised = False
        for expr, owners in exprs:
            if evaluate(expr, env) >= 1:
                continue
            for index in owners:  # every group the expression reads, one unit at a time
                if floors[index] < min(widths[s] for s in groups[index]):
                    floors[index] += 1
                    raised = True
            if raised:
                break
        if not raised:
            return [min(f, min(widths[s] for s in group)) for f, group in zip(floors, groups)]
