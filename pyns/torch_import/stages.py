"""Whole stages as `repeat(n)`: a stage's first block folded in with the identical blocks after it.

A stage of a CNN starts with a block that differs from the rest: it has the stage's stride, a projection
shortcut or none at all (its input and output widths differ), and widths that follow its input (an
expansion of 6 x the block input). The shipped archs write such a stage as one repeat, as the papers'
depth multipliers count it (`round(n * d)` blocks, TinyNet):

    repeat(2) { residual(shortcut = none) { conv(make_divisible(6 * in), 1) ... dwconv(3, stride = first(2, 1)) ... } }

with the DSL's conditional shortcut: a projection (or, for `none`, no add) exactly where stride or width
differs. The first unit is folded into the following run of identical residual units when it equals them
modulo

- strides: `first(s, 1)`;
- shortcut: a projection (`conv` / `conv_bn`) or no residual in the first, identity in the rest, and the
  rule reproduces the first unit at the default widths (its stride or widths differ, so the DSL projects /
  skips the add there, and adds the identity in the others). At other widths the first block projects
  only while its input and output differ, which is what torchvision's and timm's constructors do; the
  count and the built network follow the same IR, so they agree at every width;
- widths: equal defaults are merged into one symbol (as for identical units); a width whose default
  differs must follow its layer's input in every unit by one rule, `k * in` (`make_divisible(k * in)`
  when the family rounds to multiples of 8, as EfficientNet / MobileNet do) or `max(1, in // m)` (a
  squeeze-excite width, timm's `round(mid * 0.25 / 6)`), and belong to that unit alone.

A block unit left on its own (a stage of one block, EfficientNet's last) becomes `repeat(1)` in the same
form when the network shows it is a stage: a block of the same structure elsewhere has a residual, or it
is the only block of a stage container (timm's `blocks.0`). Its widths follow their inputs by the rule the
blocks of the same structure share, where those show one.
"""
from __future__ import annotations

from dataclasses import dataclass

from pyns.torch_import.graph import Analyzer, Op, _shape

# Units made only of these ops can be stage-folded: they keep a spatial map and read one input, so a
# width rule `... in ...` and a conditional shortcut are well defined for them.
_SAFE = {"conv", "dwconv", "bn", "act", "se", "maxpool", "avgpool", "dropout", "scale", "layernorm",
         "channel_linear"}
_STRIDED = {"conv", "dwconv", "maxpool", "avgpool"}
_ROUND = 8  # EfficientNet / MobileNet round widths to multiples of 8 (make_divisible's divisor)
_MAX_DIVISOR = 64  # squeeze widths are the layer input / 4 .. / 24 in the families covered
BLOCK_INPUT = "block_input"  # a `let` naming the block's input width, for a rule that reads it mid-block


@dataclass
class Run:
    count: int  # the repeat count (1 with `wrap`: a stage of one block)
    unit: list[Op]  # the ops written (one unit, in stage form when folded)
    units: list[list[Op]]  # every original unit, in order: their layers fill the layer map
    first: str
    last: str
    start: int = 0  # the index of its first unit
    wrap: bool = False  # write `repeat(1) { }` although count is 1


@dataclass
class _Form:
    """A unit as `residual(<kind>) { body } tail`; kind identity / proj / none (no residual: a chain)."""

    kind: str
    body: list[Op]
    tail: list[Op]
    res: Op | None  # the residual op (None for a chain)


class StageFolder:
    def __init__(self, em, units: list[list[Op]], keys: list[str], blocks: list[bool]):
        self.em, self.an = em, em.an
        self.units, self.keys, self.blocks = units, keys, blocks
        # Width references of each unit before any merging, for the "belongs to that unit alone" rule.
        self.refs = [[r for _, _, r in self._refs(_flat(u))] for u in units]
        self.owners: dict[int, list[int]] = {}
        for i, refs in enumerate(self.refs):
            for r in refs:
                self.owners.setdefault(r, []).append(i)
        self.texts: dict[tuple[int, int], str] = {}  # abstract text of an op slice, by ids
        self.forms = [self._form(u) for u in units]

    # ---- abstract structure -------------------------------------------------------------------
    def _abstract(self, ops: list[Op]) -> str:
        key = (id(ops[0]) if ops else 0, len(ops))
        if key not in self.texts:
            self.em.abstract = True
            try:
                self.texts[key] = "\n".join(self.em.lines(ops, lambda r: "W", 0, comments=False))
            finally:
                self.em.abstract = False
        return self.texts[key]

    def _form(self, unit: list[Op]) -> _Form | None:
        if not unit or any(o.kind not in _SAFE | {"residual"} for o in _flat(unit)):
            return None
        if unit[0].kind == "residual":
            res = unit[0]
            if any(o.kind == "residual" for o in _flat(res.body) + _flat(unit[1:])):
                return None  # nested blocks: keep them as they are
            if res.attrs.get("partial"):
                return None  # ReXNet's partial residual has no conditional form either
            if not res.shortcut:
                kind = "identity"
            elif Analyzer._projection(res.shortcut):
                kind = "proj"
            else:
                return None  # an explicit shortcut (ResNet-D's pooled projection) has no conditional form
            return _Form(kind, res.body, unit[1:], res)
        if any(o.kind == "residual" for o in unit):
            return None
        return _Form("none", unit, [], None)

    def _split(self, form: _Form, like: _Form) -> _Form | None:
        """`form` with the structure of `like` (an identity unit): a chain is cut where its body ends."""
        if form.kind == "none":
            n = len(like.body)
            if n > len(form.body):
                return None
            form = _Form("none", form.body[:n], form.body[n:], None)
        if self._abstract(form.body) != self._abstract(like.body) or \
                self._abstract(form.tail) != self._abstract(like.tail):
            return None
        return form

    # ---- widths -------------------------------------------------------------------------------
    def _refs(self, ops: list[Op]):
        """(op, position, root) of every width an op writes, in text order."""
        for o in ops:
            if o.kind in ("conv", "linear", "channel_linear"):
                nodes = [o.node]
            elif o.kind == "se":
                nodes = [o.attrs["reduced"]]
            else:
                continue
            for i, r in enumerate(self.an.segments(nodes[0])):
                yield o, i, r

    def _channels(self, node) -> int:
        shape = _shape(node)
        return int(shape[-1] if self.an.layout.get(node) == "cl" else shape[1])

    def _points(self, o: Op, r: int, base=None) -> tuple[int, int] | None:
        """(input width, width) of a width that might follow its layer's input (or the tensor `base`)."""
        base = o.in_node if base is None else base
        root = self.an.roots[self.an.find(r)]
        if root.fixed or root.derived or root.multiple > 1 or len(self.an.segments(base)) != 1:
            return None
        return self._channels(base), root.width

    @staticmethod
    def _rule(points: list[tuple[int, int]], base: str = "in") -> str | None:
        """The one rule `width = f(input)` that every (input, width) point obeys, or None."""
        if any(p is None for p in points):
            return None
        if all(w % b == 0 for b, w in points) and len({w // b for b, w in points}) == 1:
            k = points[0][1] // points[0][0]
            if k == 1:
                return base
            return f"make_divisible({k} * {base})" if all(w % _ROUND == 0 for _, w in points) else f"{k} * {base}"
        for m in range(2, _MAX_DIVISOR + 1):
            if all(b % m == 0 and b // m == w for b, w in points):
                return f"max(1, {base} // {m})"
        return None

    def _own(self, r: int, unit: int) -> bool:
        """Whether width group r (as first seen) is written once, by unit `unit` and nowhere else."""
        return self.owners.get(r, []) == [unit]

    # ---- folding ------------------------------------------------------------------------------
    def fold(self, runs: list[tuple[int, int]]) -> list[Run]:
        """`runs`: (start, end) of the runs of identical units (already merged). -> the runs to write."""
        out: list[Run] = []
        folded = [False] * len(runs)
        k = 0
        while k < len(runs):
            i, j = runs[k]
            if j - i == 1 and k + 1 < len(runs) and self.blocks[i]:
                run = self._fold_first(i, *runs[k + 1])
                if run is not None:
                    out.append(run)
                    folded[k] = folded[k + 1] = True
                    k += 2
                    continue
            out.append(Run(j - i, self.units[i], self.units[i:j], self.keys[i], self.keys[j - 1], i))
            k += 1
        for n, run in enumerate(out):
            after = out[n + 1].start if n + 1 < len(out) else None
            if run.count == 1 and not run.wrap:
                alone = self._alone(run.start, out, after)
                if alone is not None:
                    out[n] = alone
        return out

    def _fold_first(self, f: int, i: int, j: int) -> Run | None:
        first, rest = self.forms[f], self.forms[i]
        if first is None or rest is None or rest.kind != "identity" or not all(self.blocks[i:j]):
            return None
        first = self._split(first, rest)
        if first is None or not self._shortcut_holds(first):
            return None
        pairs = list(zip(_flat(first.body + first.tail), _flat(rest.body + rest.tail)))
        if any(_settings(a) != _settings(b) for a, b in pairs):
            return None  # another group count: the signatures ignore it, the text would not
        strides = {}
        for a, b in pairs:
            if a.kind in _STRIDED and a.attrs["s"] != b.attrs["s"]:
                strides[b.node] = f"first({a.attrs['s']}, {b.attrs['s']})"
        joins, rules = [], {}
        refs_a = list(self._refs([a for a, _ in pairs]))
        refs_b = list(self._refs([b for _, b in pairs]))
        if len(refs_a) != len(refs_b):
            return None
        for n, ((oa, _, ra), (ob, _, rb)) in enumerate(zip(refs_a, refs_b)):
            ra, rb = self.an.find(ra), self.an.find(rb)
            if ra == rb:
                continue
            root_a, root_b = self.an.roots[ra], self.an.roots[rb]
            if root_a.fixed or root_b.fixed or root_a.multiple != root_b.multiple:
                return None
            if root_a.width == root_b.width:
                joins.append((ra, rb))
                continue
            # A width that differs: it must follow its layer's input (or the block's: RegNet-Y's squeeze
            # width is a quarter of the block input), and be the unit's own.
            rule = self._rule([self._points(oa, ra), self._points(ob, rb)])
            if rule is None and oa.in_node is not first.body[0].in_node:
                rule = self._rule([self._points(oa, ra, first.body[0].in_node),
                                   self._points(ob, rb, rest.body[0].in_node)], BLOCK_INPUT)
            if rule is None or not self._own(self.refs[f][n], f) or not all(
                    self._own(self.refs[u][n], u) for u in range(i, j)):
                return None
            rules[rb] = rule
        for a, b in joins:
            self.an.union(a, b)
        self.em.strides.update(strides)
        for r, rule in rules.items():
            self.em.formulas[self.an.find(r)] = rule
        unit = self._stage_unit(first, rest, self.keys[i], any(BLOCK_INPUT in r for r in rules.values()))
        return Run(j - i + 1, unit, self.units[f:j], self.keys[f], self.keys[j - 1], f)

    def _shortcut_holds(self, form: _Form) -> bool:
        """The DSL's rule (project / skip the add where stride or width differs) gives this unit's own
        shortcut at the default widths."""
        if form.kind == "identity":
            return True
        start, end = form.body[0].in_node, form.body[-1].node
        if form.kind == "proj":
            stride = max(1, -(-_shape(start)[2] // _shape(end)[2]))
            if form.res.shortcut[0].attrs["s"] != stride:
                return False
        return _shape(start) != _shape(end)

    def _stage_unit(self, form: _Form, like: _Form, where: str, named_input: bool = False) -> list[Op]:
        """`like`'s ops (an identity unit, the block at `where`) under `form`'s shortcut rule; with
        `named_input` its body starts with `let block_input = in`."""
        head = ""
        if form.kind == "none":
            head = "shortcut = none"
        elif form.kind == "proj":
            head = "shortcut = " + ("conv_bn" if len(form.res.shortcut) == 2 else "conv")
            if form.res.shortcut[0].attrs["bias"]:
                head += ", bias = 1"
        node = like.res.node if like.res is not None else like.body[-1].node
        in_node = like.res.in_node if like.res is not None else like.body[0].in_node
        body = ([Op("let", in_node, attrs={"name": BLOCK_INPUT}, in_node=in_node)] if named_input else []) + like.body
        return [Op("residual", node, attrs={"head": head, "where": where}, body=body, in_node=in_node)] + like.tail

    # ---- a stage of one block -----------------------------------------------------------------
    def _alone(self, index: int, runs: list[Run], after: int | None) -> Run | None:
        """A stage starts with a stride or a change of width (a projection, or no residual): an identity
        block on its own continues the stage before it, and one followed by blocks of its own structure
        is a first block that could not be folded into them; neither is a stage of one block."""
        form = self.forms[index]
        if form is None or not self.blocks[index] or form.kind == "identity":
            return None
        likes = [(u, self._split(form, self.forms[u])) for u in range(len(self.units))
                 if u != index and self.forms[u] is not None and self.forms[u].kind == "identity"]
        likes = [(u, f) for u, f in likes if f is not None]
        if any(u == after for u, _ in likes):
            return None
        if form.kind == "none" and likes:
            form = likes[0][1]
        if not likes and not self._sole_block_of_stage(index, runs):
            return None
        if not self._shortcut_holds(form):
            return None
        ops = _flat(form.body + form.tail)
        strides = {o.node: f"first({o.attrs['s']}, 1)" for o in ops if o.kind in _STRIDED and o.attrs["s"] != 1}
        rules = {}
        mine = list(self._refs(ops))
        out = self.an.segments(form.body[-1].node)
        for n, (o, _, r) in enumerate(mine):
            # The block's output width is searched: in the identity blocks it is their input by definition,
            # which says nothing of how a stage's width relates to the one before.
            if not self._own(self.refs[index][n], index) or self.an.find(r) in out:
                continue
            for base in ("in", BLOCK_INPUT):  # the layer's input first, as in _fold_first
                points = [self._points(o, r, None if base == "in" else form.body[0].in_node)]
                for u, _ in likes:
                    theirs = list(self._refs(_flat(self.forms[u].body + self.forms[u].tail)))
                    if len(theirs) == len(mine):
                        points.append(self._points(theirs[n][0], theirs[n][2],
                                                   None if base == "in" else self.forms[u].body[0].in_node))
                rule = self._rule(points, base) if len({p[0] for p in points if p}) >= 2 else None
                if rule is not None:  # (one point fits any rule: that is no evidence)
                    rules[self.an.find(r)] = rule
                    break
        self.em.strides.update(strides)
        self.em.formulas.update(rules)
        like = form if form.res is not None else _Form("identity", form.body, form.tail, None)
        unit = self._stage_unit(form, like, self.keys[index], any(BLOCK_INPUT in r for r in rules.values()))
        return Run(1, unit, [self.units[index]], self.keys[index], self.keys[index], index, wrap=True)

    def _sole_block_of_stage(self, index: int, runs: list[Run]) -> bool:
        """timm's `blocks.0` holding only `blocks.0.0`, beside stage containers that hold several blocks."""
        key = self.keys[index]
        parent = key.rpartition(".")[0]
        if not parent or len(self.units[index]) < 2 or sum(k.rpartition(".")[0] == parent for k in self.keys) != 1:
            return False
        outer = parent.rpartition(".")[0]
        return any(run.count > 1 and run.first.rpartition(".")[0] != parent
                   and run.first.rpartition(".")[0].rpartition(".")[0] == outer for run in runs)


def _settings(o: Op) -> dict:
    """An op's attributes but its stride, the tensors / module paths it refers to and a depthwise conv's
    group count (its width)."""
    skip = ("s", "reduced", "paths", "split_in", "param", "where") + (("groups",) if o.kind == "dwconv" else ())
    return {k: v for k, v in o.attrs.items() if k not in skip}


def _flat(ops: list[Op]) -> list[Op]:
    """Ops in text order, a residual's body after it (stage units hold no concat)."""
    out = []
    for o in ops:
        out.append(o)
        if o.kind == "residual":
            out += _flat(o.body)
    return out
