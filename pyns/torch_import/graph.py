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

import math
import operator
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from pyns.errors import PynsError

ACT_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.SiLU: "swish", nn.Hardswish: "hswish", nn.Hardsigmoid: "hsigmoid",
    nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.GELU: "gelu", nn.LeakyReLU: "leaky_relu",
}
ACT_FUNCTIONS = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.silu: "swish", F.hardswish: "hswish",
    F.hardsigmoid: "hsigmoid", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh",
    F.gelu: "gelu", F.leaky_relu: "leaky_relu",
}
ACT_METHODS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "relu_": "relu", "sigmoid_": "sigmoid"}
# timm's own activation classes (used when it prefers them over torch's), matched by class name.
ACT_CLASS_NAMES = {"Swish": "swish", "SiLU": "swish", "HardSwish": "hswish", "HardSigmoid": "hsigmoid",
                   "Sigmoid": "sigmoid", "GELU": "gelu", "Tanh": "tanh"}
ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
IDENTITY_METHODS = {"contiguous", "clone", "detach"}
CAT = {torch.cat, torch.concat, torch.concatenate}


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


@dataclass
class Root:
    name: str
    width: int
    index: int  # topological position of the first producer
    multiple: int = 1
    fixed: str | None = None  # "in_channels" / "classes"
    derived: bool = False  # a part of a split or a shuffled tensor: its width follows the input's


def where(node: fx.Node) -> str:
    """`module path` and the forward() source line torch.fx recorded, for error messages."""
    stack = node.meta.get("nn_module_stack") or {}
    path = node.target if node.op == "call_module" else (list(stack.values())[-1][0] if stack else "")
    text = f" at module `{path}`" if path else " in the top-level forward()"
    frame = _user_frame(node.stack_trace or "")
    if frame:
        text += f"\n  {frame[0]}\n    {frame[1]}"
    return text


def _user_frame(stack: str) -> tuple[str, str] | None:
    """The innermost frame of the recorded stack that is the model's code, not torch's machinery."""
    torch_dir = os.path.dirname(torch.__file__) + os.sep
    lines = [line.strip() for line in stack.strip().splitlines()]
    frames = [(lines[i], lines[i + 1] if i + 1 < len(lines) else "") for i in range(len(lines))
              if lines[i].startswith("File ")]
    for head, code in reversed(frames):
        if torch_dir not in head:  # the first frame outside torch itself: the model's forward()
            return head, code
    return None


def op_name(node: fx.Node) -> str:
    target = node.target
    if node.op == "call_module":
        return type(node.graph.owning_module.get_submodule(target)).__name__ if node.graph.owning_module else str(target)
    if node.op == "call_method":
        return f"Tensor.{target}"
    return getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or str(target)


class UnsupportedOp(PynsError):
    """An op pyns cannot represent; `node` is the fx node name, so the importer can quote its source line."""

    def __init__(self, node: fx.Node, why: str):
        self.node, self.why, self.op = node.name, why, op_name(node)
        super().__init__(describe(node, self.op, why))


def describe(node: fx.Node, name: str, why: str) -> str:
    return f"cannot import `{name}`{where(node)}: " + (why or "pyns has no layer for this operation")


def unsupported(node: fx.Node, why: str = "") -> PynsError:
    return UnsupportedOp(node, why)


def _split_of(node: fx.Node):
    """The split / chunk node whose part `node` takes (`operator.getitem(split, i)`), else None."""
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node):
        src = node.args[0]
        if src.target in ("chunk", "split", torch.chunk, torch.split) and isinstance(node.args[1], int):
            return src
    return None


def _channel_range(node: fx.Node) -> tuple[int, int] | None:
    """(lo, hi) of `x[:, lo:hi]` (ReXNet's partial residual), else None."""
    index = node.args[1] if len(node.args) > 1 else None
    shape = _shape(node.args[0]) if isinstance(node.args[0], fx.Node) else None
    if not isinstance(index, tuple) or len(index) != 2 or shape is None or len(shape) != 4:
        return None
    whole, part = index
    if whole != slice(None) or not isinstance(part, slice) or part.step not in (None, 1):
        return None
    if not all(v is None or isinstance(v, int) for v in (part.start, part.stop)):
        return None
    lo, hi, _ = part.indices(shape[1])
    return (lo, hi) if 0 <= lo < hi else None


def _cuts(sizes: list[int]) -> list[int]:
    """The inner boundaries of a split into parts of `sizes`."""
    return [sum(sizes[:i]) for i in range(1, len(sizes))]


def _shape(node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def _pair(v, what: str, node) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise unsupported(node, f"non-square {what} {tuple(v)}")
        v = v[0]
    return int(v)


class Analyzer:
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
    # ---- union-find ---------------------------------------------------------------------------
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

    # ---- classification -----------------------------------------------------------------------
    def inputs(self, node: fx.Node) -> list[fx.Node]:
        if node in self.cat_inputs:
            return self.cat_inputs[node]
        split = _split_of(node)
        if split is not None:
            return [split.args[0]]
        return [a for a in node.all_input_nodes if a in self.index]

    def classify(self, node: fx.Node) -> tuple[str, dict]:
        """(kind, attributes) of one tensor node; raises for what pyns cannot represent."""
        shape, ins = _shape(node), self.inputs(node)
        if node.op == "placeholder":
            return "input", {}
        if node.op == "get_attr" or (ins and all(self.kind.get(a, ("",))[0] == "param" for a in ins)
                                     and node.op == "call_method" and node.target in ("reshape", "view")):
            return "param", {"name": node.target if node.op == "get_attr" else self.kind[ins[0]][1]["name"]}
        if node.op == "call_module":
            return self.classify_module(node, self.modules[node.target], shape, ins)
        target = node.target
        if node.op == "call_function" and target in ACT_FUNCTIONS:
            return "act", {"act": ACT_FUNCTIONS[target]}
        if node.op == "call_method" and target in ACT_METHODS:
            return "act", {"act": ACT_METHODS[target]}
        if target in ("permute", torch.permute):
            dims = node.args[1:] if node.op == "call_method" and len(node.args) > 2 else node.args[1]
            dims = tuple(dims)
            layout = self.layout.get(ins[0], "cf")
            if dims == (0, 2, 3, 1) and layout == "cf":
                return "to_cl", {}
            if dims == (0, 3, 1, 2) and layout == "cl":
                return "to_cf", {}
            raise unsupported(node, f"a permute {dims} (pyns follows channels-last regions of ConvNeXt blocks)")
        if target in MUL and len(ins) == 2 and any(self.kind.get(a, ("",))[0] == "param" for a in ins):
            p, x = ins if self.kind[ins[0]][0] == "param" else ins[::-1]
            channels = _shape(x)[-1] if self.layout.get(x) == "cl" else _shape(x)[1]
            if math.prod(_shape(p)) != channels or max(_shape(p)) != channels:
                raise unsupported(node, f"a product with a parameter of shape {_shape(p)}")
            return "scale", {"param": self.kind[p][1]["name"], "x": x, "p": p}
        if target in ADD or target in MUL:
            if len(ins) != 2 or len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
                raise unsupported(node, "only the sum / product of two tensors is supported")
            if _shape(ins[0])[:2] != _shape(ins[1])[:2]:
                raise unsupported(node, f"operands of shape {_shape(ins[0])} and {_shape(ins[1])}")
            kind = "add" if target in ADD else "mul"
            if kind == "add" and _shape(ins[0]) != _shape(ins[1]):
                raise unsupported(node, "a broadcasting add")
            return kind, {}
        split = _split_of(node)
        if split is not None:
            return self.split_part(node, split, ins)
        if target is operator.getitem and ins and shape == _shape(ins[0]):
            return "identity", {}  # an index that keeps everything (GhostNet's out[:, :out_chs] when even)
        if target is operator.getitem and ins and _channel_range(node) is not None:
            lo, hi = _channel_range(node)
            return "cslice", {"lo": lo, "hi": hi}
        if target in CAT:
            dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
            if len(shape) != 4 or dim % 4 != 1:
                raise unsupported(node, f"a concatenation along dim {dim} (pyns joins channels, dim 1)")
            return ("cat", {}) if len(ins) > 1 else ("identity", {})
        if target in (torch.flatten, "flatten", "view", "reshape", torch.reshape):
            return self.reshape(node, shape, ins)
        if target in ("mean", torch.mean):
            dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
            keep = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
            in_shape = _shape(ins[0])
            dims = tuple(sorted(d % 4 for d in (dims if isinstance(dims, (tuple, list)) else [dims])))
            if len(in_shape) == 4 and dims == (2, 3):
                return "gap", {"flatten": not keep}
            raise unsupported(node, f"a mean over dims {dims}")
        if target in (F.adaptive_avg_pool2d,):
            return self.adaptive(node, node.args[1] if len(node.args) > 1 else node.kwargs["output_size"])
        if target in (F.dropout,):
            p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
            return ("dropout", {"p": float(p)}) if p > 0 else ("identity", {})
        if node.op == "call_method" and target in IDENTITY_METHODS:
            return "identity", {}
        if target in ("transpose", torch.transpose) and len(shape) == 5 and sorted(node.args[1:3]) == [1, 2]:
            return "shuffle_mid", {}
        if getattr(target, "__name__", "") in ("stochastic_depth", "drop_path"):
            # Stochastic depth (torchvision) / DropPath (timm): the identity in eval mode, where the model
            # is traced. The function is fx-wrapped, so it appears as a call rather than being traced.
            return "identity", {}
        raise unsupported(node)

    def split_part(self, node, split, ins):
        """Part i of `x.chunk(n, 1)` / `x.split(sizes, 1)` (ShuffleNetV2, CSP, MixNet): its channel sizes."""
        c = _shape(ins[0])[1]
        if split.target in ("chunk", torch.chunk):
            n = split.args[1] if len(split.args) > 1 else split.kwargs.get("chunks")
            each = -(-c // n)
            sizes = [min(each, c - i * each) for i in range(n) if i * each < c]
        else:
            size = split.args[1] if len(split.args) > 1 else split.kwargs.get("split_size_or_sections")
            sizes = list(size) if isinstance(size, (list, tuple)) else [min(size, c - i) for i in range(0, c, size)]
        dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
        if dim % 4 != 1 or sum(sizes) != c or len(sizes) < 2:
            raise unsupported(split, "a split along a dimension other than the channels")
        return "slice", {"part": node.args[1], "sizes": sizes}

    def reshape(self, node, shape, ins):
        in_shape = _shape(ins[0])
        if in_shape == shape:
            return "identity", {}
        if len(in_shape) == 4 and len(shape) == 5 and shape[0] == in_shape[0] and shape[1] * shape[2] == in_shape[1]:
            return "shuffle_in", {"g": shape[1]}
        if len(in_shape) == 5 and len(shape) == 4 and shape[1] == in_shape[1] * in_shape[2]:
            return "shuffle", {}
        if len(in_shape) == 4 and len(shape) == 2 and shape[1] == math.prod(in_shape[1:]):
            return "flatten", {}
        raise unsupported(node, f"a reshape from {in_shape} to {shape}")

    def adaptive(self, node, size):
        size = _pair(size, "output size", node)
        return ("gap", {"flatten": False}) if size == 1 else ("apool", {"size": size})

    def classify_module(self, node, m: nn.Module, shape, ins):
        cls = type(m)
        name = cls.__name__
        if cls is nn.Conv2d:
            return self.conv(node, m)
        if isinstance(m, nn.BatchNorm2d) and (cls is nn.BatchNorm2d or name in ("BatchNormAct2d",)):
            if not m.affine or not m.track_running_stats:
                raise unsupported(node, "BatchNorm without affine parameters or running statistics")
            attrs = {"eps": float(m.eps), "act": None}
            if name == "BatchNormAct2d":
                if not isinstance(getattr(m, "drop", nn.Identity()), (nn.Identity, nn.Dropout)):
                    raise unsupported(node, "BatchNormAct2d with a drop layer")
                act = m.act
                if not isinstance(act, nn.Identity):
                    attrs["act"] = self.act_kind(node, act)
            return "bn", attrs
        if cls is nn.BatchNorm1d:
            if not m.affine or not m.track_running_stats:
                raise unsupported(node, "BatchNorm without affine parameters or running statistics")
            return "bn", {"eps": float(m.eps), "act": None}
        if isinstance(m, nn.LayerNorm) and (cls is nn.LayerNorm or name == "LayerNorm2d"):
            want = "cl" if cls is nn.LayerNorm else "cf"
            c = _shape(ins[0])[-1 if want == "cl" else 1]
            if self.layout.get(ins[0], "cf") != want or tuple(m.normalized_shape) != (c,) or not m.elementwise_affine \
                    or m.bias is None:
                raise unsupported(node, "a LayerNorm that is not over the channels, with weight and bias")
            return "layernorm", {"eps": float(m.eps)}
        if isinstance(m, nn.Linear) and self.layout.get(ins[0]) == "cl" and len(_shape(ins[0])) == 4:
            return "channel_linear", {"bias": m.bias is not None}
        if cls is nn.Linear or (isinstance(m, nn.Linear) and cls.__module__.startswith("timm.")
                                and name == "Linear"):  # timm's Linear only adds a TorchScript dtype cast
            if len(_shape(ins[0])) != 2:
                raise unsupported(node, "a Linear layer on a tensor that is not [batch, features]")
            return "linear", {"bias": m.bias is not None}
        if cls in (nn.Dropout, nn.Dropout2d, nn.AlphaDropout):
            if cls is not nn.Dropout:
                raise unsupported(node, "only nn.Dropout is supported")
            return ("dropout", {"p": float(m.p)}) if m.p > 0 else ("identity", {})
        if cls is nn.Identity:
            return "identity", {}
        if cls is nn.Flatten:
            return self.reshape(node, shape, ins)
        if cls in (nn.MaxPool2d, nn.AvgPool2d):
            k, s = _pair(m.kernel_size, "kernel", node), _pair(m.stride, "stride", node)
            p = _pair(m.padding, "padding", node)
            if cls is nn.MaxPool2d and _pair(m.dilation, "dilation", node) != 1:
                raise unsupported(node, "dilated max pooling")
            if cls is nn.AvgPool2d and m.divisor_override is not None:
                raise unsupported(node, "average pooling with a divisor override")
            exclude = cls is nn.AvgPool2d and not m.count_include_pad
            return ("maxpool" if cls is nn.MaxPool2d else "avgpool"), {"k": k, "s": s, "p": p, "ceil": m.ceil_mode,
                                                                       "exclude": exclude}
        if cls is nn.AdaptiveAvgPool2d:
            return self.adaptive(node, m.output_size)
        act = self.act_kind(node, m, required=False)
        if act is not None:
            return "act", {"act": act}
        raise unsupported(node)

    def act_kind(self, node, m: nn.Module, required: bool = True) -> str | None:
        cls = type(m)
        kind = ACT_MODULES.get(cls)
        if kind is None and cls.__module__.startswith("timm."):
            kind = ACT_CLASS_NAMES.get(cls.__name__)
        if kind == "gelu" and getattr(m, "approximate", "none") != "none":
            raise unsupported(node, "tanh-approximated GELU")
        if kind == "leaky_relu" and m.negative_slope != 0.01:
            raise unsupported(node, f"LeakyReLU with slope {m.negative_slope} (pyns has torch's default 0.01)")
        if kind is None and required:
            raise unsupported(node, f"activation {cls.__name__}")
        return kind

    def conv(self, node, m: nn.Conv2d):
        if m.padding_mode != "zeros":
            raise unsupported(node, f"padding_mode {m.padding_mode!r}")
        k = _pair(m.kernel_size, "kernel", node)
        s = _pair(m.stride, "stride", node)
        d = _pair(m.dilation, "dilation", node)
        if isinstance(m.padding, str):
            if m.padding == "valid":
                p = 0
            elif (d * (k - 1)) % 2 == 0:  # 'same' at stride 1: symmetric exactly when the span is even
                p = d * (k - 1) // 2
            else:
                raise unsupported(node, "asymmetric 'same' padding")
        else:
            p = _pair(m.padding, "padding", node)
        g, cin, cout = m.groups, m.in_channels, m.out_channels
        kind = "dwconv" if g == cin == cout and g > 1 else "conv"
        if g == cin and cout != cin and g > 1:
            raise unsupported(node, "a depthwise conv with a channel multiplier")
        return kind, {"k": k, "s": s, "p": p, "d": d, "groups": g, "bias": m.bias is not None}

    # ---- pass 1: widths -----------------------------------------------------------------------
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

    # ---- pass 2: structure --------------------------------------------------------------------
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


def analyze(gm: fx.GraphModule) -> Analyzer:
    analyzer = Analyzer(gm)
    analyzer.channels()
    analyzer.ops = analyzer.structure()
    return analyzer
