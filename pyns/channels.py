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

Identity adds join the space of a residual's input with the space of its output: the joined spaces form
a *class* whose channels must be pruned together (ResNet's stem, b1b, b2b). `channel_map` computes all
of this from the IR at given widths (the widths decide which shortcuts exist, see `pin_shortcuts`), and
is the one place the builder (gate placement), the shrinker (index plans), the pruner (units, filters)
and the L1 baseline learn the channel structure from.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

from pyns import ir
from pyns.dsl.expr import Const, Expr, Sym, evaluate, symbols

__all__ = ["ChannelMap", "Space", "channel_map", "count_filters", "pin_shortcuts", "residual_structure"]


@dataclass
class Space:
    id: str
    width: Expr
    symbol: str | None  # the searchable symbol of a symbol space; None for a derived space
    # conv / linear layers whose output channels are this space (producers, depthwise convs and
    # projection shortcuts included): "the filters of the space"
    layers: list[str] = field(default_factory=list)
    se_reduce: str | None = None  # for a squeeze-excite's reduced space: the SE layer that makes it


@dataclass
class ChannelMap:
    spaces: dict[str, Space]
    # layer name -> role -> space id (None: a width that never changes). Roles: conv/linear "in", "out";
    # BatchNorm "channels"; squeeze-excite "channels", "reduced".
    layers: dict[str, dict[str, str | None]]
    flatten_hw: dict[str, int]  # Linear right after a Flatten: the H*W features of each channel
    grouped: list[str]  # grouped convs that are not depthwise: channels cannot keep their groups
    classes: list[tuple[str, ...]]  # spaces joined by identity adds, in order of first appearance
    frozen: set[str]  # spaces joined by an identity add to a width that never changes

    def __post_init__(self) -> None:
        self._class_index = {space: i for i, members in enumerate(self.classes) for space in members}

    def class_of(self, space: str) -> tuple[str, ...]:
        return self.classes[self._class_index[space]]

    def symbol_classes(self) -> list[tuple[str, ...]]:
        """Classes holding a searchable symbol: the units of the global ranking."""
        return [c for c in self.classes if any(self.spaces[s].symbol for s in c)]

    def derived_classes(self) -> list[tuple[str, ...]]:
        """Classes of derived spaces only: each chooses its survivors within itself."""
        return [c for c in self.classes if not any(self.spaces[s].symbol for s in c)]

    def width(self, space: str, env: Mapping[str, int]) -> int:
        return int(evaluate(self.spaces[space].width, env))


def _varies(expr: Expr, searchable: set[str]) -> bool:
    return bool(symbols(expr) & searchable)


def _is_depthwise(node: ir.Conv, env: Mapping[str, int]) -> bool:
    if node.groups == node.in_ch == node.out_ch and node.groups != Const(1):
        return True
    groups = int(evaluate(node.groups, env))
    return groups > 1 and groups == int(evaluate(node.in_ch, env)) == int(evaluate(node.out_ch, env))


class _Tracer:
    def __init__(self, network: ir.Network, env: Mapping[str, int]):
        self.env = env
        self.searchable = {s.name for s in network.searchable}
        self.spaces: dict[str, Space] = {}
        self.layers: dict[str, dict[str, str | None]] = {}
        self.flatten_hw: dict[str, int] = {}
        self.grouped: list[str] = []
        self.parent: dict[str, str] = {}
        self.frozen_roots: set[str] = set()

    # -- union-find over space ids -------------------------------------------------------------------
    def find(self, a: str) -> str:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str | None, b: str | None) -> None:
        if a is None and b is None:
            return
        if a is None or b is None:  # a varying width added to one that never changes: it cannot prune
            self.frozen_roots.add(self.find(a if a is not None else b))
            return
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.frozen_roots:
                self.frozen_roots.add(ra)

    def space(self, expr: Expr, made_by: str) -> str | None:
        """The space a layer named `made_by` creates with output width `expr`."""
        if not _varies(expr, self.searchable):
            return None
        if isinstance(expr, Sym):
            sid, symbol = expr.name, expr.name
        else:
            sid, symbol = made_by, None
        if sid not in self.spaces:
            self.spaces[sid] = Space(sid, expr, symbol)
            self.parent[sid] = sid
        return sid

    # -- the data-flow walk --------------------------------------------------------------------------
    def trace(self, nodes: list[ir.Node], current: str | None, hw: int = 1) -> str | None:
        for node in nodes:
            if isinstance(node, ir.Conv):
                if _is_depthwise(node, self.env):
                    out = current  # filter c reads input channel c only: the channel index is kept
                else:
                    out = self.space(node.out_ch, node.name)
                    if int(evaluate(node.groups, self.env)) != 1:
                        self.grouped.append(node.name)
                self.layers[node.name] = {"in": current, "out": out}
                if out is not None:
                    self.spaces[out].layers.append(node.name)
                current, hw = out, 1
            elif isinstance(node, ir.BatchNorm):
                self.layers[node.name] = {"channels": current}
            elif isinstance(node, ir.Flatten):
                channels = int(evaluate(node.channels, self.env))
                hw = int(evaluate(node.features, self.env)) // max(channels, 1)
            elif isinstance(node, ir.Linear):
                out = self.space(node.out_features, node.name)
                self.layers[node.name] = {"in": current, "out": out}
                self.flatten_hw[node.name] = hw
                if out is not None:
                    self.spaces[out].layers.append(node.name)
                current, hw = out, 1
            elif isinstance(node, ir.SqueezeExcite):
                reduced = self.space(node.reduced, f"{node.name}.reduced")
                if reduced is not None:
                    self.spaces[reduced].se_reduce = node.name
                self.layers[node.name] = {"channels": current, "reduced": reduced}
            elif isinstance(node, ir.Residual):
                current = self.residual(node, current, hw)
                hw = 1
        return current

    def residual(self, node: ir.Residual, x: str | None, hw: int) -> str | None:
        out = self.trace(node.body, x, hw)
        differs = bool(evaluate(node.project_when, self.env))
        if node.mode == "identity" or not differs:
            self.union(out, x)  # identity add (mode 'none' adds only when widths agree)
        elif node.mode == "project":
            self.union(out, self.trace(node.shortcut, x, hw) if node.shortcut else x)
        return out


def channel_map(network: ir.Network, widths: Mapping[str, int]) -> ChannelMap:
    """The channel spaces of `network` built at `widths` (completed with the defaults)."""
    env = {**network.defaults(), **widths}
    tracer = _Tracer(network, env)
    tracer.trace(network.layers, None)
    groups: dict[str, list[str]] = {}
    for sid in tracer.spaces:  # insertion order: order of first appearance in the network
        groups.setdefault(tracer.find(sid), []).append(sid)
    frozen = {sid for root, members in groups.items() if root in tracer.frozen_roots for sid in members}
    return ChannelMap(tracer.spaces, tracer.layers, tracer.flatten_hw, tracer.grouped,
                      [tuple(m) for m in groups.values()], frozen)


def count_filters(cmap: ChannelMap, widths: Mapping[str, int]) -> int:
    """Filters of the searchable widths: the output channels of every conv / linear layer whose output
    width is a searchable symbol (projection shortcuts included), i.e. what the paper and the reference
    code count as "the total neurons (filters) of the network". A width tied to others by an identity
    add counts once per producing layer; derived widths (expansions, SE) are not counted."""
    return sum(len(space.layers) * int(widths[space.symbol])
               for space in cmap.spaces.values() if space.symbol is not None)


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
            out.append(node)
        return out

    return dataclasses.replace(network, layers=pin(network.layers))
