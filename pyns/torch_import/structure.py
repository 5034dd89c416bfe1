"""Pass 2, block structure: walking back from the output, adds become residuals, gating products
squeeze-excites, concatenations branches, everything else a chain; a node reached twice or never is an error."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import fx

from pyns.errors import PynsError
from pyns.torch_import.nodes import _shape, unsupported


@dataclass
class Op:
    kind: str  # conv dwconv bn act maxpool avgpool gap apool flatten linear dropout se residual
    node: fx.Node  # the fx node whose output this op produces
    path: str = ""  # module path holding the parameters ("" for functional ops)
    attrs: dict = field(default_factory=dict)
    body: list["Op"] = field(default_factory=list)  # residual body
    shortcut: list["Op"] = field(default_factory=list)  # residual projection ([] = identity)
    branches: list[list["Op"]] = field(default_factory=list)  # concat branches ([] = the input itself)
    in_node: fx.Node | None = None  # the op's input tensor


class StructureMixin:
    """Part of `Analyzer` (graph.py): runs after the width pass (reads `kind`, `index`, `output`) and
    records `anc` (ancestor bit masks) and `visited`."""

    def structure(self) -> list[Op]:
        self.anc: dict[fx.Node, int] = {}
        for node in self.nodes:
            mask = 1 << self.index[node]
            for a in self.inputs(node):
                mask |= self.anc[a]
            self.anc[node] = mask
        start = self.nodes[0]
        if start.op != "placeholder" or sum(n.op == "placeholder" for n in self.nodes) != 1:
            raise PynsError("the model's forward() must take exactly one tensor input")
        self.input = start
        ops = self.chain(start, self.output)
        self.visited.add(start)
        missed = [n for n in self.nodes if n not in self.visited and self.anc[self.output] >> self.index[n] & 1]
        if missed:
            raise unsupported(missed[0], "this node's output takes a path that pyns cannot follow "
                                         "(a branch that is not a residual add or a squeeze-excite)")
        return ops

    def visit(self, node: fx.Node) -> None:
        if node in self.visited:
            raise unsupported(node, "its output feeds two branches in a way pyns cannot represent")
        self.visited.add(node)

    def chain(self, start: fx.Node, end: fx.Node) -> list[Op]:
        ops: list[Op] = []
        node = end
        while node is not start:
            if self.index[node] < self.index[start] or node.op == "placeholder":
                raise unsupported(end, "a branch that does not rejoin where it forked")
            self.visit(node)
            kind, attrs = self.kind[node]
            ins = self.inputs(node)
            if kind == "add":
                a, b = ins
                common = self.anc[a] & self.anc[b]
                fork = self.nodes[common.bit_length() - 1]
                ops.append(self.residual(node, fork, self.chain(fork, a), self.chain(fork, b)))
                node = fork
            elif kind == "mul":
                a, b = ins
                if self.anc[b] >> self.index[a] & 1:
                    x, gate = a, b
                elif self.anc[a] >> self.index[b] & 1:
                    x, gate = b, a
                else:
                    raise unsupported(node, "a product of two unrelated tensors")
                ops.append(self.squeeze_excite(node, x, self.chain(x, gate)))
                node = x
            elif kind == "cat" and self.partial(node) is not None:
                x, y, head = self.partial(node)
                fork = self.nodes[(self.anc[x] & self.anc[y]).bit_length() - 1]
                for part in (*ins, head):  # the add, the passing part and the added part
                    self.visit(part)
                if self.chain(fork, y):
                    raise unsupported(node, "a partial residual whose shortcut has layers of its own")
                ops.append(Op("residual", node, attrs={"partial": True}, body=self.chain(fork, x), in_node=fork))
                node = fork
            elif kind == "cat":
                common = -1
                for a in ins:
                    common &= self.anc[a]
                fork = self.nodes[common.bit_length() - 1]
                ops.append(Op("concat", node, branches=[self.chain(fork, a) for a in ins], in_node=fork))
                node = fork
            elif kind in ("identity", "to_cl", "to_cf"):
                node = ins[0]
            elif kind == "scale":
                p = attrs["p"]
                while p is not None:
                    self.visit(p)
                    parents = self.inputs(p)
                    p = parents[0] if parents else None
                ops.append(Op("scale", node, attrs={"param": attrs["param"]}, in_node=attrs["x"]))
                node = attrs["x"]
            elif kind == "shuffle":
                mid = self._skip_identity(ins[0])
                first = self._skip_identity(self.inputs(mid)[0]) if self.kind[mid][0] == "shuffle_mid" else None
                if first is None or self.kind[first][0] != "shuffle_in":
                    raise unsupported(node, "a reshape that is not a channel shuffle")
                self.visit(mid)
                self.visit(first)
                ops.append(Op("shuffle", node, attrs={"g": self.kind[first][1]["g"]}, in_node=self.inputs(first)[0]))
                node = self.inputs(first)[0]
            elif kind in ("shuffle_in", "shuffle_mid"):
                raise unsupported(node, "a reshape / transpose that is not part of a channel shuffle")
            else:
                prev = ins[0]
                if kind == "bn" and attrs["act"]:  # timm's BatchNormAct2d: a BN and its activation
                    ops.append(Op("act", node, attrs={"act": attrs["act"]}, in_node=node))
                ops.append(Op(kind, node, node.target if node.op == "call_module" else "", attrs, in_node=prev))
                if kind == "slice":
                    ops[-1].attrs = {**attrs, "split_in": prev}
                if kind == "gap" and attrs.get("flatten"):
                    ops[-1:] = [Op("flatten", node, in_node=node), ops[-1]]
                node = prev
        ops.reverse()
        return ops

    def partial(self, node: fx.Node):
        """(body output x, shortcut input y, x[:, :k]) when `node` is ReXNet's `cat([x[:, :k] + y, x[:, k:]])`,
        else None."""
        ins = self.inputs(node)
        if len(ins) != 2 or self.kind[ins[0]][0] != "add" or self.kind[ins[1]][0] != "cslice":
            return None
        rest, c = self.kind[ins[1]][1], _shape(node)[1]
        for head, y in (self.inputs(ins[0]), self.inputs(ins[0])[::-1]):
            kind, attrs = self.kind[head]
            if (kind == "cslice" and head.args[0] is ins[1].args[0] and attrs["lo"] == 0
                    and attrs["hi"] == rest["lo"] and rest["hi"] == c and len(head.users) == 1):
                return head.args[0], y, head
        return None

    def _shuffle_in(self, node):
        """The 4D -> 5D view that starts the channel shuffle ending at `node`."""
        mid = self._skip_identity(self.inputs(node)[0], visit=False)
        if self.kind[mid][0] != "shuffle_mid":
            raise unsupported(node, "a reshape that is not a channel shuffle")
        first = self._skip_identity(self.inputs(mid)[0], visit=False)
        if self.kind[first][0] != "shuffle_in":
            raise unsupported(node, "a reshape that is not a channel shuffle")
        return first

    def _skip_identity(self, node, visit: bool = True):
        while self.kind[node][0] == "identity":
            if visit:
                self.visit(node)
            node = self.inputs(node)[0]
        return node

    def residual(self, node, fork, a: list[Op], b: list[Op]) -> Op:
        if a and b and self._projection(a) and not self._projection(b):
            a, b = b, a
        if a and b and not self._projection(b):
            if any(o.kind in ("residual", "concat", "se") for o in a + b) or len(b) > len(a):
                a, b = (b, a) if len(b) > len(a) else (a, b)
            if any(o.kind in ("residual", "concat", "se") for o in b):
                raise unsupported(node, "a residual add whose two branches both hold nested blocks")
        body, shortcut = (a, b) if a else (b, a)
        if not body:
            raise unsupported(node, "an add of a tensor to itself")
        return Op("residual", node, attrs={}, body=body, shortcut=shortcut, in_node=fork)

    @staticmethod
    def _projection(ops: list[Op]) -> bool:
        kinds = [o.kind for o in ops]
        if kinds not in (["conv"], ["conv", "bn"]):
            return False
        c = ops[0].attrs
        return c["k"] == 1 and c["p"] == 0 and c["groups"] == 1 and c["d"] == 1 and (
            len(ops) == 1 or ops[1].attrs["eps"] == 1e-5)

    def squeeze_excite(self, node, x, ops: list[Op]) -> Op:
        kinds = [o.kind for o in ops]
        norm = None
        if kinds == ["gap", "conv", "bn", "act", "conv", "act"]:
            norm = ops.pop(2)  # timm's SEModule with a norm layer: a BN on the reduced channels
            if norm.attrs["eps"] != 1e-5:
                raise unsupported(norm.node, f"a squeeze-excite BatchNorm with eps {norm.attrs['eps']:g} (pyns: 1e-5)")
            kinds = [o.kind for o in ops]
        if kinds != ["gap", "conv", "act", "conv", "act"] or ops[0].attrs["flatten"]:
            raise unsupported(node, "a product that is not a squeeze-excite gate "
                                    "(global pool, 1x1 conv, activation, 1x1 conv, gate)")
        for conv in (ops[1], ops[3]):
            c = conv.attrs
            if c["k"] != 1 or c["groups"] != 1 or not c["bias"]:
                raise unsupported(conv.node, "a squeeze-excite conv that is not a 1x1 conv with bias")
        return Op("se", node, attrs={"reduced": ops[1].node, "act": ops[2].attrs["act"],
                                      "gate": ops[4].attrs["act"],
                                      "paths": (ops[1].path, ops[3].path) + ((norm.path,) if norm else ())},
                  in_node=x)
