"""fx graph -> a nested list of layer ops (residuals nest) plus the coupled width groups.

Two passes over the traced graph:

1. Channel groups (the dependency graph): a union-find over channel "producers". A conv or linear
   starts a new group, every other op passes its input's group through; an add joins its operands'
   groups, a depthwise conv ties its output to its input, a squeeze-excite multiply ties the gate to
   the gated tensor. A grouped conv (1 < groups < channels) requires its input and output groups to be
   multiples of the group count: such a group is searched as its per-group width.
2. Structure: walking back from the output, an add becomes a residual whose fork is the latest common
   ancestor of its operands (ancestor sets as bit masks over the topological order), a multiply whose
   one operand is an ancestor of the other becomes a squeeze-excite, everything else must be a chain.
   Every tensor node must be consumed exactly once, so a topology this cannot express (a dense
   connection, a concat) is an error naming the node, never a silently different network.
"""
from __future__ import annotations

from torch import fx

from pyns.torch_import.classify import CAT, ClassifyMixin
from pyns.torch_import.groups import GroupsMixin, Root
# Re-exported: emit.py, stages.py and convert.py import these from here, the importer's one entry point.
from pyns.torch_import.nodes import (UnsupportedOp, _shape, describe, op_name, unsupported,  # noqa: F401
                                     where)
from pyns.torch_import.structure import Op, StructureMixin

__all__ = ["Analyzer", "Op", "Root", "UnsupportedOp", "analyze", "describe", "op_name", "unsupported", "where"]


class Analyzer(ClassifyMixin, GroupsMixin, StructureMixin):
    """The analysis state of one traced graph; the passes live in the mixins (classify.py, groups.py,
    structure.py), which share these attributes."""

    def __init__(self, gm: fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.nodes = [n for n in gm.graph.nodes
                      if n.op != "output" and (_shape(n) is not None or n.op == "placeholder")]
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.parent: dict[int, int] = {}
        self.roots: dict[int, Root] = {}
        self.root_of: dict[fx.Node, int] = {}
        self.grouped: list[tuple[int, int]] = []  # (root, group count) constraints
        self.kind: dict[fx.Node, tuple[str, dict]] = {}
        self.visited: set[fx.Node] = set()
        self.cat_inputs: dict[fx.Node, list[fx.Node]] = {}
        self.expand: dict[int, list[int]] = {}  # a group found to be a concatenation of others
        self.halves: dict[fx.Node, list[int]] = {}  # split node -> the groups of its two halves
        self.layout: dict[fx.Node, str] = {}  # "cl" inside a channels-last region (ConvNeXt), else "cf"
        self._dense_cats()

    def _dense_cats(self) -> None:
        """DenseNet concatenates the whole list of earlier features at every layer. cat(a1..an) equals
        cat(cat(a1..an-1), an), and that inner cat is already a node (the previous layer's input), so
        each such cat is rewritten to two operands: the graph becomes a chain of `x -> cat(x, f(x))`."""
        seen: dict[tuple[fx.Node, ...], fx.Node] = {}
        for node in self.nodes:
            if node.op == "call_function" and node.target in CAT and node.args and isinstance(node.args[0], (list, tuple)):
                parts = tuple(node.args[0])
                if len(parts) >= 3 and parts[:-1] in seen:
                    self.cat_inputs[node] = [seen[parts[:-1]], parts[-1]]
                seen.setdefault(parts, node)


def analyze(gm: fx.GraphModule) -> Analyzer:
    analyzer = Analyzer(gm)
    analyzer.channels()
    analyzer.ops = analyzer.structure()
    return analyzer
