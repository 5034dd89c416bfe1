"""Analyzed graph -> readable .arch text, with identical consecutive blocks folded into `repeat(n)`.

A *unit* is the run of top-level ops that belong to one block module (the module class that holds a
residual add, e.g. torchvision's `Bottleneck`, or any sibling of such a module): a ResNet block and
the ReLU after its add. Consecutive units with the same structure and the same default widths are
emitted once inside `repeat(n)`, so a depth multiplier acts on them; their width groups are merged
position by position (a repeat body names one set of widths), which ties for example the inner width
of all identical bottlenecks of a stage together — the shape of a hand-written stage.
"""
from __future__ import annotations

import re

from pyns.dsl.elaborate import LAYER_SPECS
from pyns.dsl.names import reserved_names
from pyns.errors import PynsError
from pyns.torch_import.graph import Analyzer, Op, _shape, unsupported
from pyns.torch_import.stages import BLOCK_INPUT, Run, StageFolder

# The language's reserved words (keywords, layers, functions, shortcuts, `in`...) and the header's parameters.
# `block_input`: the name folded stages give their block input (pyns.torch_import.stages).
RESERVED = set(reserved_names(LAYER_SPECS)) | {"resolution", "classes", "in_channels", "network", "policy",
                                                BLOCK_INPUT}


def sanitize(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", text).strip("_") or "w"
    if name[0].isdigit():
        name = "w" + name
    return name + "_" if name in RESERVED else name


class Emitter:
    def __init__(self, an: Analyzer):
        self.an = an
        # Set by stage folding (pyns.torch_import.stages): the `first(a, b)` stride of an op of a repeat
        # body, and the expression of a width that follows its layer's input (`make_divisible(6 * in)`).
        self.strides: dict = {}
        self.formulas: dict[int, str] = {}
        self.abstract = False  # write strides as `S`, group counts as `G`: signatures that ignore them

    # ---- widths -------------------------------------------------------------------------------
    def width(self, node, names) -> str:
        return " + ".join(self.root_width(r, node, names) for r in self.an.segments(node))

    def root_width(self, r: int, node, names) -> str:
        root = self.an.roots[r]
        if root.fixed:
            return root.fixed
        if r in self.formulas and not self.abstract:
            return self.formulas[r]
        if root.derived:
            raise unsupported(node, "a width tied to one half of a channel split")
        name = names(r)
        if root.multiple > 1:
            return f"{'G' if self.abstract else root.multiple} * {name}"
        return name

    # ---- one op -> lines ----------------------------------------------------------------------
    def lines(self, ops: list[Op], names, depth: int, comments: bool) -> list[str]:
        out: list[str] = []
        pad = "    " * depth
        for o in ops:
            a = o.attrs
            text = None
            if o.kind == "conv":
                args = [self.width(o.node, names), str(a["k"])]
                args += self._conv_options(a, self._stride(o))
                if a["groups"] > 1:
                    args.append(f"groups = {'G' if self.abstract else a['groups']}")
                text = f"conv({', '.join(args)})"
            elif o.kind == "dwconv":
                text = f"dwconv({', '.join([str(a['k'])] + self._conv_options(a, self._stride(o)))})"
            elif o.kind == "bn":
                text = "bn" if a["eps"] == 1e-5 else f"bn(eps = {a['eps']:g})"
            elif o.kind == "act":
                text = a["act"]
            elif o.kind in ("maxpool", "avgpool"):
                text = (f"{o.kind}({a['k']}, {self._stride(o) or a['s']}, {a['p']}" + (", ceil = 1" if a["ceil"] else "")
                        + (", exclude_pad = 1" if a.get("exclude") else "") + ")")
            elif o.kind == "gap":
                text = "gap"
            elif o.kind == "apool":
                text = f"adaptive_avgpool({a['size']})"
            elif o.kind == "flatten":
                text = "flatten"
            elif o.kind == "layernorm":
                text = "layernorm" if a["eps"] == 1e-6 else f"layernorm(eps = {a['eps']:g})"
            elif o.kind == "channel_linear":
                text = f"channel_linear({self.width(o.node, names)}" + ("" if a["bias"] else ", bias = 0") + ")"
            elif o.kind == "scale":
                text = "scale"
            elif o.kind == "slice" and a.get("aligned"):  # parts made of whole width groups
                lo, hi = sum(a["sizes"][:a["part"]]), sum(a["sizes"][:a["part"] + 1])
                text = self._slice_text(self.an.segments(a["split_in"]), lo, hi, o.node, names)
            elif o.kind == "cslice":  # x[:, lo:hi] on boundaries between width groups
                text = self._slice_text(self.an.segments(o.in_node), a["lo"], a["hi"], o.node, names)
            elif o.kind == "slice":  # torch.chunk(2): the first part is the larger one
                text = "slice(0, in - in // 2)" if a["part"] == 0 else "slice(in - in // 2, in // 2)"
            elif o.kind == "shuffle":
                text = f"shuffle({a['g']})"
            elif o.kind == "linear":
                text = f"linear({self.width(o.node, names)}" + ("" if a["bias"] else ", bias = 0") + ")"
            elif o.kind == "dropout":
                text = f"dropout({a['p']:g})"
            elif o.kind == "se":
                text = (f"se({self.width(a['reduced'], names)}, act = {a['act']}, gate = {a['gate']}"
                        + (", bn = 1" if len(a["paths"]) > 2 else "") + ")")
            elif o.kind == "let":  # a folded stage's name for its block input (pyns.torch_import.stages)
                text = f"let {a['name']} = in"
            elif o.kind == "residual":
                out += self.residual_lines(o, names, depth, comments)
                continue
            elif o.kind == "concat":
                head = pad + "concat {"
                out.append(f"{head:<48} # {_common_path(o)}" if comments else head)
                for branch in o.branches:
                    if branch:
                        out.append(pad + "    branch {")
                        out += self.lines(branch, names, depth + 2, comments)
                        out.append(pad + "    }")
                    else:
                        out.append(pad + "    branch { }" + ("                                  # the input itself" if comments else ""))
                out.append(pad + "}")
                continue
            else:  # pragma: no cover - graph.py produces only the kinds above
                raise PynsError(f"internal: no .arch form for op kind {o.kind}")
            if comments and o.kind == "se":
                text = f"{pad + text:<48} # {', '.join(a['paths'])}"
            elif comments and o.kind == "scale":
                text = f"{pad + text:<48} # {a['param']}"
            elif comments and o.path and o.kind != "act":
                text = f"{pad + text:<48} # {o.path}"
            else:
                text = pad + text
            out.append(text)
        return out

    def _slice_text(self, segs: list[int], lo: int, hi: int, node, names) -> str:
        """`slice(start, width)` of channels [lo, hi), each written as a sum of the width groups it spans."""
        before, inside, pos = [], [], 0
        for r in segs:
            (before if pos < lo else inside if pos < hi else []).append(r)
            pos += self.an.roots[r].width
        start = " + ".join(self.root_width(r, node, names) for r in before) or "0"
        return f"slice({start}, {' + '.join(self.root_width(r, node, names) for r in inside)})"

    def _stride(self, o: Op) -> str | None:
        """A stride written other than as its value: `first(2, 1)` in a folded stage, `S` in a signature."""
        return "S" if self.abstract else self.strides.get(o.node)

    @staticmethod
    def _conv_options(a, stride: str | None = None) -> list[str]:
        opts = []
        if stride is not None:
            opts.append(f"stride = {stride}")
        elif a["s"] != 1:
            opts.append(f"stride = {a['s']}")
        if a["p"] != a["d"] * (a["k"] // 2):
            opts.append(f"pad = {a['p']}")
        if a["bias"]:
            opts.append("bias = 1")
        if a["d"] != 1:
            opts.append(f"dilation = {a['d']}")
        return opts

    def residual_lines(self, o: Op, names, depth: int, comments: bool) -> list[str]:
        pad = "    " * depth
        args = []
        if "head" in o.attrs:  # a folded stage's shortcut rule, decided by pyns.torch_import.stages
            head = pad + "residual" + (f"({o.attrs['head']})" if o.attrs["head"] else "") + " {"
            if comments:
                head = f"{head:<48} # {o.attrs['where']}"
            return [head] + self.lines(o.body, names, depth + 1, comments) + [pad + "}"]
        if o.shortcut and not Analyzer._projection(o.shortcut):
            head = pad + "residual {"
            if comments:
                head = f"{head:<48} # {_block_path(o.node)}"
            return ([head] + self.lines(o.body, names, depth + 1, comments) + [pad + "    shortcut {"]
                    + self.lines(o.shortcut, names, depth + 2, comments) + [pad + "    }", pad + "}"])
        if o.attrs.get("partial"):
            args.append("shortcut = partial")  # the input added into the first channels of the body's output
        if o.shortcut:
            conv = o.shortcut[0]
            args.append("shortcut = " + ("conv_bn" if len(o.shortcut) == 2 else "conv"))
            if conv.attrs["bias"]:
                args.append("bias = 1")
            in_hw, out_hw = _shape(o.in_node)[2:], _shape(o.node)[2:]
            stride = max(1, -(-in_hw[0] // out_hw[0]))
            if conv.attrs["s"] != stride and tuple(in_hw) != (1, 1):  # on a 1x1 map every stride is the same
                raise unsupported(conv.node, f"a projection shortcut of stride {conv.attrs['s']} beside a body "
                                             f"of stride {stride}")
            if stride == 1:
                args.append("always = 1")  # the imported network keeps its projection at any widths
        head = pad + "residual" + (f"({', '.join(args)})" if args else "") + " {"
        if comments:
            head = f"{head:<48} # {_block_path(o.node)}"
        return [head] + self.lines(o.body, names, depth + 1, comments) + [pad + "}"]

    # ---- units and repeats --------------------------------------------------------------------
    def units(self, ops: list[Op]) -> list[list[Op]]:
        """Consecutive top-level ops grouped by the block module they belong to; `self.unit_keys` holds
        each unit's block path (or its op's path)."""
        blocks = [o for o in ops if o.kind in ("residual", "concat")]
        block_types = {_block_class(o.node) for o in blocks} - {None}
        block_parents = {_block_path(o.node).rpartition(".")[0] for o in blocks}
        # A block of a stage container beside those holding residual blocks (timm's `blocks.0.0`, the
        # single depthwise-separable block of EfficientNet's first stage) is a unit too.
        stage_lists = {p.rpartition(".")[0] for p in block_parents if "." in p}
        depths = {_block_path(o.node).count(".") for o in blocks}
        units: list[list[Op]] = []
        self.unit_keys: list[str] = []
        self.unit_blocks: list[bool] = []  # whether the unit is a block module (not a lone layer)
        last_key = None
        for o in ops:
            key = None
            for path, cls in reversed(_stack(o.node)):  # the innermost block: a DenseNet layer, not its block
                parent = path.rpartition(".")[0]
                if cls in block_types or (parent in block_parents and "." in path) or (
                        path.count(".") in depths and parent.rpartition(".")[0] in stage_lists and "." in parent):
                    key = path
                    break
            if key is not None and key == last_key:
                units[-1].append(o)
            else:
                units.append([o])
                self.unit_keys.append(key or o.path)
                self.unit_blocks.append(key is not None)
            last_key = key
        return units

    def signature(self, unit: list[Op]) -> tuple[str, list[int]]:
        slots: list[int] = []

        def slot(r: int) -> str:
            if r not in slots:
                slots.append(r)
            root = self.an.roots[r]
            return f"s{slots.index(r)}_{root.width}"

        text = "\n".join(self.lines(unit, slot, 0, comments=False))
        return text, slots

    def fold_repeats(self, ops: list[Op], fold: bool = True) -> list[Run]:
        """The runs to write, with the width groups of repeated units merged; a stage's first unit is
        folded into the identical units after it (pyns.torch_import.stages). `fold=False` keeps every
        unit (and every width group) on its own."""
        units = self.units(ops)
        keys = self.unit_keys
        if not fold:
            return [Run(1, u, [u], k, k, n) for n, (u, k) in enumerate(zip(units, keys))]
        folder = StageFolder(self, units, keys, self.unit_blocks)  # reads the groups before any merge
        sigs = [self.signature(u) for u in units]
        spans = []
        i = 0
        while i < len(units):
            j = i + 1
            while j < len(units) and sigs[j][0] == sigs[i][0] and self._mergeable(sigs[i][1], sigs[j][1]):
                j += 1
            for k in range(i + 1, j):
                for a, b in zip(sigs[i][1], sigs[k][1]):
                    self.an.union(a, b)
            spans.append((i, j))
            i = j
        return folder.fold(spans)

    def _mergeable(self, a: list[int], b: list[int]) -> bool:
        for x, y in zip(a, b):
            if (self.an.roots[self.an.find(x)].fixed or self.an.roots[self.an.find(y)].fixed) and (
                    self.an.find(x) != self.an.find(y)):
                return False
        return True


def _common_path(o: Op) -> str:
    """The deepest module holding every layer of a concat (its branches' ops)."""
    paths = [op.path for b in o.branches for op in b if op.path] or [_block_path(o.node)]
    parts = [p.split(".") for p in paths]
    common = []
    for items in zip(*parts):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    return ".".join(common)


def _stack(node) -> list[tuple[str, type]]:
    stack = node.meta.get("nn_module_stack") or {}
    return [(path, cls) for path, cls in stack.values()]


def _block_path(node) -> str:
    stack = _stack(node)
    return stack[-1][0] if stack else ""


def _block_class(node):
    stack = _stack(node)
    return stack[-1][1] if stack else None
