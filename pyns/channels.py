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
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from pyns import ir
from pyns.dsl.expr import Const, Expr, Op, Sym, evaluate, symbols

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
    blocks: int = 1  # `M * s`: M blocks of s channels that keep equal sizes (see the module docstring)


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
    # concat layer name -> its output's segments, in channel order: (space id or None, width expression)
    composites: dict[str, list[tuple[str | None, Expr]]] = field(default_factory=dict)
    # layers that re-route channels (shuffle, misaligned slice) or mix channel statistics (LayerNorm):
    # layer name -> the role (space or composite id) whose changing width makes a shrink inexact there
    rerouted: dict[str, str] = field(default_factory=dict)
    composite_layers: dict[str, list[str]] = field(default_factory=dict)  # depthwise convs on a composite
    # composites whose every channel a conv has just written: one conv writing several spaces at once
    # (`conv(a + b)`), or a concat whose every branch ends in a conv (MixNet's mixed conv); gated per segment
    gated_composites: set[str] = field(default_factory=set)

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

    def blocks(self, space: str | None) -> int:
        """Blocks of a space (1 for a plain space, a composite or None)."""
        sp = self.spaces.get(space) if space is not None else None
        return sp.blocks if sp is not None else 1

    def class_blocks(self, members: tuple[str, ...]) -> int:
        """Blocks a class's keep set must respect: every member's (their least common multiple)."""
        return math.lcm(*(self.blocks(m) for m in members))

    def width(self, space: str, env: Mapping[str, int]) -> int:
        if space in self.composites:
            return sum(int(evaluate(w, env)) for _, w in self.composites[space])
        return int(evaluate(self.spaces[space].width, env))

    def segments(self, role: str | None) -> list[str]:
        """The simple spaces a role's channels belong to (a composite's varying segments, in order)."""
        if role is None:
            return []
        if role in self.composites:
            return [s for s, _ in self.composites[role] if s is not None]
        return [role]


def _varies(expr: Expr, searchable: set[str]) -> bool:
    return bool(symbols(expr) & searchable)


def blocked_form(expr: Expr, searchable: set[str]) -> tuple[str, int] | None:
    """`M * s` or `s * M` (M an integer > 1, s a searchable symbol) -> (s, M); anything else -> None."""
    if not (isinstance(expr, Op) and expr.op == "mul" and len(expr.args) == 2):
        return None
    for a, b in (expr.args, expr.args[::-1]):
        if isinstance(a, Const) and isinstance(a.value, int) and a.value > 1 and isinstance(b, Sym) \
                and b.name in searchable:
            return b.name, a.value
    return None


def _is_depthwise(node: ir.Conv, env: Mapping[str, int], searchable: set[str]) -> bool:
    if node.groups == node.in_ch == node.out_ch and node.groups != Const(1):
        return True
    groups = int(evaluate(node.groups, env))
    if not (groups > 1 and groups == int(evaluate(node.in_ch, env)) == int(evaluate(node.out_ch, env))):
        return False
    # `conv(32 * s, 3, groups = 32)` is depthwise only while s = 1: it stays a grouped conv of blocks, so
    # the channel structure (and the gates) do not change when a per-group width reaches 1.
    return not any(blocked_form(e, searchable) for e in (node.in_ch, node.out_ch))


class _Tracer:
    def __init__(self, network: ir.Network, env: Mapping[str, int]):
        self.env = env
        self.searchable = {s.name for s in network.searchable}
        self.bare = _bare_widths(network.layers)  # symbols some layer makes as a bare width
        self.spaces: dict[str, Space] = {}
        self.layers: dict[str, dict[str, str | None]] = {}
        self.flatten_hw: dict[str, int] = {}
        self.grouped: list[str] = []
        self.parent: dict[str, str] = {}
        self.frozen_roots: set[str] = set()
        self.composites: dict[str, list[tuple[str | None, Expr]]] = {}
        self.rerouted: dict[str, str] = {}
        self.composite_layers: dict[str, list[str]] = {}
        self.gated_composites: set[str] = set()

    # -- layouts: a role is a space id, a composite (concat) id, or None -------------------------------
    def layout(self, role: str | None, width: Expr) -> list[tuple[str | None, Expr]]:
        if role is None:
            return [(None, Const(int(evaluate(width, self.env))))]
        if role in self.composites:
            return list(self.composites[role])
        return [(role, self.spaces[role].width)]

    # -- union-find over space ids -------------------------------------------------------------------
    def find(self, a: str) -> str:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str | None, b: str | None) -> None:
        if a is None and b is None:
            return
        if (a in self.composites) or (b in self.composites):
            self.union_layouts(a, b)
            return
        if a is None or b is None:  # a varying width added to one that never changes: it cannot prune
            self.frozen_roots.add(self.find(a if a is not None else b))
            return
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            if rb in self.frozen_roots:
                self.frozen_roots.add(ra)

    def union_layouts(self, a: str | None, b: str | None) -> None:
        """An identity add where a side is a concat: segment by segment when both sides cut the
        channels at the same places; otherwise no channel can be removed from either side."""
        la = self.composites.get(a) if a is not None else None
        lb = self.composites.get(b) if b is not None else None
        la = la if la is not None else ([(a, self.spaces[a].width)] if a is not None else None)
        lb = lb if lb is not None else ([(b, self.spaces[b].width)] if b is not None else None)
        ws = [[int(evaluate(w, self.env)) for _, w in side] for side in (la or [], lb or [])]
        if la is not None and lb is not None and ws[0] == ws[1]:
            for (sa, _), (sb, _) in zip(la, lb):
                self.union(sa, sb)
            return
        for side in (la or [], lb or []):
            for sid, _ in side:
                if sid is not None:
                    self.frozen_roots.add(self.find(sid))

    def space(self, expr: Expr, made_by: str) -> str | None:
        """The space a layer named `made_by` creates with output width `expr`."""
        if not _varies(expr, self.searchable):
            return None
        blocked = blocked_form(expr, self.searchable)
        if isinstance(expr, Sym):
            sid, symbol, blocks = expr.name, expr.name, 1
        elif blocked is not None and blocked[0] not in self.bare:
            sid, symbol, blocks = blocked[0], blocked[0], blocked[1]
        else:
            # `M * s` where some layer makes `s` itself (MobileNetV2's expansion `6 * in`), or any other
            # expression: a derived space, whose survivors are chosen by its own score over all channels.
            sid, symbol, blocks = made_by, None, 1
        if sid not in self.spaces:
            self.spaces[sid] = Space(sid, expr, symbol, blocks=blocks)
            self.parent[sid] = sid
        return sid

    # -- the data-flow walk --------------------------------------------------------------------------
    def trace(self, nodes: list[ir.Node], current: str | None, hw: int = 1) -> str | None:
        for node in nodes:
            if isinstance(node, ir.Conv):
                if _is_depthwise(node, self.env, self.searchable):
                    out = current  # filter c reads input channel c only: the channel index is kept
                elif self.sum_of_spaces(node):
                    out = node.name  # `conv(a + b)`: filters of each space side by side
                else:
                    out = self.space(node.out_ch, node.name)
                    if int(evaluate(node.groups, self.env)) != 1:
                        self.grouped.append(node.name)
                self.layers[node.name] = {"in": current, "out": out}
                if out in self.composites:  # a depthwise conv on a concat's output: filters of each part
                    self.composite_layers.setdefault(out, []).append(node.name)
                elif out is not None:
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
            elif isinstance(node, ir.ChannelLinear):  # a 1x1 conv stored as a Linear [out, in]
                out = self.space(node.out_ch, node.name)
                self.layers[node.name] = {"in": current, "out": out}
                if out is not None:
                    self.spaces[out].layers.append(node.name)
                current = out
            elif isinstance(node, (ir.LayerNorm, ir.Scale)):
                self.layers[node.name] = {"channels": current}
                if isinstance(node, ir.LayerNorm) and current is not None:
                    self.rerouted[node.name] = current
            elif isinstance(node, ir.Concat):
                current = self.concat(node, current)
            elif isinstance(node, ir.Slice):
                current = self.slice(node, current)
            elif isinstance(node, ir.Shuffle):
                # The channels keep their spaces (the shrunk net shuffles its own), but which channel
                # lands where depends on the width: not the masked network's routing.
                if current is not None:
                    self.rerouted[node.name] = current
                self.layers[node.name] = {"channels": current}
        return current

    def sum_of_spaces(self, node: ir.Conv) -> bool:
        """A plain conv whose width is a sum of distinct searchable symbols and constants (the torch importer's
        `conv(a + b)` before a split, ReXNet's `conv(in + e)`): its output is a composite of those spaces."""
        terms, stack = [], [node.out_ch]
        while stack:
            expr = stack.pop()
            if isinstance(expr, Op) and expr.op == "add":
                stack += reversed(expr.args)
            else:
                terms.append(expr)
        names = [t.name for t in terms if isinstance(t, Sym)]
        if (len(terms) < 2 or int(evaluate(node.groups, self.env)) != 1 or len(set(names)) != len(names)
                or not names or any(not isinstance(t, (Sym, Const)) or (isinstance(t, Sym) and t.name not in
                                                                        self.searchable) for t in terms)):
            return False
        self.composites[node.name] = [(self.space(t, node.name) if isinstance(t, Sym) else None, t) for t in terms]
        self.gated_composites.add(node.name)
        return True

    def partial(self, node: ir.Residual, out: str | None, x: str | None) -> None:
        """A partial add joins the input's channels with the first `in` channels of the body's output."""
        prefix, offset, total = [], 0, int(evaluate(node.in_ch, self.env))
        for sid, w in self.layout(out, node.out_ch):
            if offset >= total:
                break
            prefix.append((sid, w))
            offset += int(evaluate(w, self.env))
        mine = self.layout(x, node.in_ch)
        widths = [[int(evaluate(w, self.env)) for _, w in side] for side in (prefix, mine)]
        if widths[0] == widths[1]:
            for (sa, _), (sb, _) in zip(prefix, mine):
                self.union(sa, sb)
            return
        for sid, _ in prefix + mine:  # the add cuts through a space: none of these channels can be removed
            if sid is not None:
                self.frozen_roots.add(self.find(sid))

    def concat(self, node: ir.Concat, x: str | None) -> str | None:
        segments: list[tuple[str | None, Expr]] = []
        for branch in node.branches:
            out = self.trace(branch, x) if branch else x
            segments += self.layout(out, _out_width(branch, node.in_ch))
        merged: list[tuple[str | None, Expr]] = []
        for sid, width in segments:  # neighbouring fixed segments are one block of fixed channels
            if sid is None and merged and merged[-1][0] is None:
                merged[-1] = (None, Const(int(merged[-1][1].value) + int(width.value)))  # type: ignore[union-attr]
            else:
                merged.append((sid, width))
        if all(sid is None for sid, _ in merged):
            return None
        self.composites[node.name] = merged
        if all(branch and isinstance(branch[-1], ir.Conv) for branch in node.branches):
            self.gated_composites.add(node.name)  # a block-diagonal conv: as exact to gate as `conv(a + b)`
        return node.name

    def slice(self, node: ir.Slice, x: str | None) -> str | None:
        if x is None:
            return None
        start, width = int(evaluate(node.start, self.env)), int(evaluate(node.width, self.env))
        layout, offset, picked = self.layout(x, node.in_ch), 0, []
        for sid, w in layout:  # whole segments only: then the slice selects those spaces exactly
            size = int(evaluate(w, self.env))
            if offset >= start and offset + size <= start + width:
                picked.append((sid, w))
            elif offset < start + width and offset + size > start:
                picked = None
                break
            offset += size
        if picked is not None and sum(int(evaluate(w, self.env)) for _, w in picked) == width:
            if all(sid is None for sid, _ in picked):
                return None
            if len(picked) == 1:
                return picked[0][0]
            self.composites[node.name] = picked
            return node.name
        # Cuts a space: the channels it selects change with the widths. Its output is a derived
        # space of its own (survivors chosen by score), and the shrink through it is approximate.
        self.rerouted[node.name] = x
        return self.space(node.width, node.name)

    def residual(self, node: ir.Residual, x: str | None, hw: int) -> str | None:
        out = self.trace(node.body, x, hw)
        differs = bool(evaluate(node.project_when, self.env))
        if node.mode == "partial":
            self.partial(node, out, x)
        elif node.mode == "identity" or not differs:
            self.union(out, x)  # identity add (mode 'none' adds only when widths agree)
        elif node.mode == "project":
            self.union(out, self.trace(node.shortcut, x, hw) if node.shortcut else x)
        return out


def _bare_widths(nodes: list[ir.Node], out: set[str] | None = None) -> set[str]:
    """Symbols that some conv / linear / SE / slice makes as a bare width (`conv(s)`)."""
    out = set() if out is None else out
    for node in nodes:
        for width in (getattr(node, "out_ch", None), getattr(node, "out_features", None),
                      getattr(node, "reduced", None), getattr(node, "width", None)):
            if isinstance(width, Sym):
                out.add(width.name)
        if isinstance(node, ir.Residual):
            _bare_widths(node.body, out)
            _bare_widths(node.shortcut, out)
        elif isinstance(node, ir.Concat):
            for branch in node.branches:
                _bare_widths(branch, out)
    return out


def _out_width(nodes: list[ir.Node], width: Expr) -> Expr:
    """The channel width a branch's layers leave, starting from `width`."""
    for node in nodes:
        if isinstance(node, (ir.Conv, ir.Residual, ir.Concat, ir.ChannelLinear)):
            width = node.out_ch
        elif isinstance(node, ir.Linear):
            width = node.out_features
        elif isinstance(node, ir.Slice):
            width = node.width
    return width


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
