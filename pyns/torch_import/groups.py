"""Pass 1, width groups: a union-find over channel producers. Every op's output is a list of groups (one, or
several for a concatenation); adds join groups, splits cut them into parts, grouped convs set a multiple."""
from __future__ import annotations

import math
from dataclasses import dataclass

from torch import fx

from pyns.errors import PynsError
from pyns.torch_import.nodes import _cuts, _shape, _split_of, unsupported, where


@dataclass
class Root:
    name: str
    width: int
    index: int  # topological position of the first producer
    multiple: int = 1
    fixed: str | None = None  # "in_channels" / "classes"
    derived: bool = False  # a part of a split or a shuffled tensor: its width follows the input's


class GroupsMixin:
    """Part of `Analyzer` (graph.py): fills its `parent`, `roots`, `root_of`, `grouped`, `expand`, `halves`,
    `layout` and `kind`; classifies each node through `classify` (ClassifyMixin)."""

    def new_root(self, node: fx.Node, name: str) -> int:
        r = len(self.parent)
        self.parent[r] = r
        shape = _shape(node)
        self.roots[r] = Root(name, int(shape[-1] if self.layout.get(node) == "cl" else shape[1]), self.index[node])
        return r

    def find(self, r: int) -> int:
        while self.parent[r] != r:
            self.parent[r] = self.parent[self.parent[r]]
            r = self.parent[r]
        return r

    def union(self, a: int, b: int, node: fx.Node | None = None) -> int:
        a, b = self.find(a), self.find(b)
        if a == b:
            return a
        ra, rb = self.roots[a], self.roots[b]
        if ra.width != rb.width:
            raise PynsError(f"internal: joining widths {ra.width} and {rb.width}" + (where(node) if node else ""))
        if (rb.index, rb.fixed is None) < (ra.index, ra.fixed is None) or (rb.fixed and not ra.fixed):
            a, b, ra, rb = b, a, rb, ra
        self.parent[b] = a
        ra.fixed = ra.fixed or rb.fixed
        ra.derived = ra.derived or rb.derived
        return a

    def root(self, node: fx.Node) -> int:
        segs = self.segments(node)
        if len(segs) != 1:
            raise unsupported(node, "a layer that needs one width group reads a concatenation here")
        return segs[0]

    def segments(self, node: fx.Node) -> list[int]:
        return [x for r in self.root_of[node] for x in self._expanded(r)]

    def _expanded(self, r: int) -> list[int]:
        r = self.find(r)
        if r not in self.expand:
            return [r]
        return [x for part in self.expand[r] for x in self._expanded(part)]

    def _aligned(self, segs: list[int], attrs) -> list[int] | None:
        """The groups making up part `attrs['part']` of a split, when its boundaries fall between groups."""
        sizes, i = attrs["sizes"], attrs["part"]
        return self._range(segs, sum(sizes[:i]), sum(sizes[:i + 1]))

    def _range(self, segs: list[int], lo: int, hi: int) -> list[int] | None:
        """The groups making up channels [lo, hi), when no group straddles lo or hi."""
        out, pos = [], 0
        for r in segs:
            w = self.roots[r].width
            if lo <= pos and pos + w <= hi:
                out.append(r)
            elif pos < hi and pos + w > lo:
                return None
            pos += w
        return out or None

    def refine(self, segs: list[int], cuts, node: fx.Node, keep_name: bool = False) -> list[int] | None:
        """Split the groups of `segs` that a boundary in `cuts` falls inside (MixNet's mixed convs split one
        tensor at boundaries that cut through each other's parts; ReXNet adds into its first `in`
        channels): each part becomes a group of its own, and every conv producing the group then writes
        its width as their sum. None (nothing changed) when such a group is not a fresh one. `keep_name`: the
        last part keeps the group's name (ReXNet's extra width; the first part joins the block input's)."""
        pos, plan = 0, []
        for r in segs:
            w = self.roots[r].width
            inner = sorted({c - pos for c in cuts if pos < c < pos + w})
            if inner:
                root = self.roots[r]
                if any(r == planned for planned, _ in plan):
                    return None  # one group cut at two places of a tensor that holds it twice
                if root.fixed or root.derived or root.multiple > 1 or any(self.find(g) == r for g, _ in self.grouped):
                    return None  # (a grouped conv's group must stay one width: its multiple is set at the end)
                plan.append((r, inner))
            pos += w
        for r, inner in plan:
            root, edges, parts = self.roots[r], [0] + inner + [self.roots[r].width], []
            for i in range(len(edges) - 1):
                k = len(self.parent)
                self.parent[k] = k
                last = keep_name and i == len(edges) - 2
                self.roots[k] = Root(root.name if last else f"{root.name}_{i}", edges[i + 1] - edges[i], root.index)
                parts.append(k)
            self.expand[r] = parts
        return self.segments(node)

    def _splittable(self, source: fx.Node, node: fx.Node) -> bool:
        segs = self.segments(source)
        if len(segs) != 1:
            return False
        if _split_of(node) in self.halves:
            return True
        root = self.roots[segs[0]]
        return not (root.fixed or root.derived or root.multiple > 1)

    def join(self, a: list[int], b: list[int], node: fx.Node) -> list[int]:
        """Add / multiply operands, group by group. A single fresh group against a concatenation
        (GhostNet's projection shortcut beside its ghost module's cat) becomes that concatenation: the
        conv producing it then writes its width as the sum of the parts."""
        if len(a) != len(b):
            one, many = (a, b) if len(a) == 1 else (b, a) if len(b) == 1 else (None, None)
            root = self.roots[one[0]] if one else None
            if root is None or root.fixed or root.derived or root.multiple > 1 or one[0] in many or \
                    root.width != sum(self.roots[x].width for x in many):
                raise unsupported(node, "an add or multiply of tensors split into channel groups differently")
            self.expand[one[0]] = list(many)
            return list(many)
        return [self.union(x, y, node) for x, y in zip(a, b)]

    def channels(self) -> None:
        for node in self.nodes:
            kind, attrs = self.kind[node] = self.classify(node)
            ins = self.inputs(node)
            self.layout[node] = {"to_cl": "cl", "to_cf": "cf"}.get(kind, self.layout.get(ins[0], "cf") if ins else "cf")
            if kind == "param":
                self.root_of[node] = []
                continue
            if kind == "scale":
                self.root_of[node] = self.root_of[attrs["x"]]
                continue
            if kind == "input":
                segs = [self.new_root(node, "in_channels")]
                self.roots[segs[0]].fixed = "in_channels"
            elif kind in ("conv", "linear", "channel_linear"):
                segs = [self.new_root(node, node.target)]
                g = attrs.get("groups", 1)
                if g > 1:
                    if kind == "conv" and attrs["groups"] > 1 and len(self.segments(ins[0])) != 1:
                        raise unsupported(node, "a grouped conv reading a concatenation")
                    self.grouped += [(self.segments(ins[0])[0], g), (segs[0], g)]
            elif kind == "cat":
                segs = [r for a in ins for r in self.segments(a)]
            elif kind == "shuffle" and len(self.segments(ins[0])) == self.kind[self._shuffle_in(node)][1]["g"]:
                # A shuffle interleaves its g input groups channel by channel: for the permutation to stay
                # one of whole groups, their widths must stay equal, so they become one width group.
                first = self.segments(ins[0])[0]
                for other in self.segments(ins[0])[1:]:
                    first = self.union(first, other, node)
                segs = [first] * len(self.segments(ins[0]))
            elif kind == "slice" and self._splittable(ins[0], node):
                # A fresh group split into parts (CSP, MixNet) becomes one group per part: the conv
                # producing it then writes its width as their sum.
                parent = self.segments(ins[0])[0]
                split = _split_of(node)
                if split not in self.halves:
                    parts = {u.args[1]: u for u in split.users if _split_of(u) is split}
                    if sorted(parts) != list(range(len(attrs["sizes"]))):
                        raise unsupported(split, "a split whose parts are not all used")
                    base = self.roots[parent].name
                    self.halves[split] = [self.new_root(parts[i], f"{base}_{i}") for i in range(len(parts))]
                    for r in self.halves[split]:
                        self.roots[r].index = self.roots[parent].index
                    self.expand[parent] = list(self.halves[split])
                segs = [self.halves[split][attrs["part"]]]
                attrs["aligned"] = True
            elif kind == "slice" and self._aligned(self.segments(ins[0]), attrs) is not None:
                # A split on boundaries between width groups takes those groups themselves.
                segs = self._aligned(self.segments(ins[0]), attrs)
                attrs["aligned"] = True
            elif kind == "slice" and self.refine(self.segments(ins[0]), _cuts(attrs["sizes"]), ins[0]) is not None:
                segs = self._aligned(self.segments(ins[0]), attrs)
                attrs["aligned"] = True
            elif kind == "cslice":
                segs = self._range(self.segments(ins[0]), attrs["lo"], attrs["hi"])
                if segs is None and self.refine(self.segments(ins[0]), (attrs["lo"], attrs["hi"]), ins[0], True):
                    segs = self._range(self.segments(ins[0]), attrs["lo"], attrs["hi"])
                if segs is None:
                    raise unsupported(node, "a channel slice that cuts a width which follows another")
            elif kind == "slice" and len(attrs["sizes"]) != 2:
                raise unsupported(node, "a split whose boundaries cut through the width groups of a concatenation"
                                  if len(self.segments(ins[0])) > 1 else
                                  "a split into more than two parts of a tensor whose width follows another")
            elif kind in ("slice", "shuffle"):
                segs = [self.new_root(node, node.name)]
                self.roots[segs[0]].derived = True
            elif kind in ("add", "mul"):
                segs = self.join(self.segments(ins[0]), self.segments(ins[1]), node)
            else:
                if len(ins) != 1:
                    raise unsupported(node, f"{len(ins)} tensor inputs")
                segs = self.root_of[ins[0]]
            self.root_of[node] = segs
        output = next(n for n in self.gm.graph.nodes if n.op == "output")
        result = output.args[0]
        if not isinstance(result, fx.Node) or result not in self.index:
            raise PynsError("the model must return one tensor (its logits); it returns "
                            f"{type(result).__name__}")
        self.output = result
        if len(self.segments(result)) != 1:
            raise PynsError("the model's output is a concatenation; pyns needs one classifier output")
        out_root = self.segments(result)[0]
        if self.roots[out_root].fixed == "in_channels":
            raise PynsError("the network's output channels are tied to its input channels")
        self.roots[out_root].fixed = "classes"
        for r, g in self.grouped:
            root = self.roots[self.find(r)]
            if root.fixed:
                continue
            root.multiple = root.multiple * g // math.gcd(root.multiple, g)
