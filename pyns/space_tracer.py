"""The IR walk behind `pyns.channels.channel_map`: a union-find over channel spaces, traced layer by layer at
given widths (symbol and derived spaces, blocked per-group widths, concat composites, re-routing layers)."""
from __future__ import annotations

from collections.abc import Mapping

from pyns import ir
from pyns.dsl.expr import Const, Expr, Op, Sym, evaluate, symbols
from pyns.spaces import Space


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


class SpaceTracer:
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


def _bare_widths(nodes: list[ir.Node]) -> set[str]:
    """Symbols that some conv / linear / SE / slice makes as a bare width (`conv(s)`)."""
    return {width.name for node in ir.every_node(nodes)
            for width in (getattr(node, "out_ch", None), getattr(node, "out_features", None),
                          getattr(node, "reduced", None), getattr(node, "width", None))
            if isinstance(width, Sym)}


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
