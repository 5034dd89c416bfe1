"""Elaboration: an `ArchSource` plus settings (parameter overrides, depth, resolution) -> IR `Network`.

Blocks are expanded, repeats unrolled (scaled by the depth multiplier under the policy), channel counts
tracked symbolically through every layer and spatial sizes concretely. Every semantic check happens
here, before anything is counted or built, and reports the source position.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import lark

from pyns import ir
from pyns.dsl.context import ACTIVATIONS, SHORTCUTS, Flag, Namer, State, Word
from pyns.dsl.declarations import STANDARD_PARAMS, ArchSource, BlockDef, suggest
from pyns.dsl.expr import FUNCTIONS, Const, Expr, ExprError, Memo, Number, Op, Sym, op, to_source
from pyns.dsl.layers import make_layer
from pyns.dsl.limits import (MAX_EXPR_DEPTH, MAX_EXPR_NODES, MAX_NESTING, MAX_NUMBER, MAX_REPEAT,
                             MAX_RESOLUTION, MAX_WIDTH, Budget, nesting_message)
from pyns.dsl.names import check_declarations
from pyns.errors import DSLError, SourcePos, shorten
from pyns.policies import ScalingPolicy, get_policy


# layer -> (positional parameter names, defaults, parameters that take words)
LAYER_SPECS: dict[str, tuple[tuple[str, ...], dict[str, object], tuple[str, ...]]] = {
    "conv": (("out", "k", "stride", "pad", "groups", "bias", "dilation"),
             {"k": 3, "stride": 1, "pad": None, "groups": 1, "bias": 0, "dilation": 1}, ()),
    "dwconv": (("k", "stride", "pad", "bias", "mult", "dilation"),
               {"k": 3, "stride": 1, "pad": None, "bias": 0, "mult": 1, "dilation": 1}, ()),
    "bn": (("eps",), {"eps": 1e-5}, ()),
    "maxpool": (("k", "stride", "pad", "ceil"), {"k": 2, "stride": None, "pad": 0, "ceil": 0}, ()),
    "avgpool": (("k", "stride", "pad", "ceil", "exclude_pad"),
                {"k": 2, "stride": None, "pad": 0, "ceil": 0, "exclude_pad": 0}, ()),
    "gap": ((), {}, ()),
    "adaptive_avgpool": (("size",), {}, ()),
    "flatten": ((), {}, ()),
    "linear": (("out", "bias"), {"bias": 1}, ()),
    "dropout": (("p",), {"p": 0.5}, ()),
    "slice": (("start", "width"), {}, ()),
    "shuffle": (("groups",), {}, ()),
    "layernorm": (("eps",), {"eps": 1e-6}, ()),
    "channel_linear": (("out", "bias"), {"bias": 1}, ()),
    "scale": ((), {}, ()),
    "se": (("reduced", "act", "gate", "bn"), {"reduced": None, "act": "relu", "gate": "sigmoid", "bn": 0},
           ("act", "gate")),
    **{a: ((), {}, ()) for a in ACTIVATIONS},
}
# always = 1: keep the projection even where stride and widths would allow the identity (imported nets).
RESIDUAL_SPEC = (("shortcut", "bias", "always"), {"shortcut": "identity", "bias": 0, "always": 0}, ("shortcut",))


@dataclass
class Settings:
    params: dict[str, Number] = field(default_factory=dict)
    variant: str | None = None
    policy: str | None = None
    depth_mult: float = 1.0
    resolution: int | None = None


class _Scope:
    def __init__(self, values: dict[str, object], parent: "_Scope | None" = None):
        self.values = values
        self.parent = parent

    def lookup(self, name: str):
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.values:
                return scope.values[name]
            scope = scope.parent
        raise KeyError(name)

    def names(self) -> set[str]:
        out = set(self.values)
        return out | self.parent.names() if self.parent else out


def _shown(expr: Expr) -> str:
    return shorten(to_source(expr))


class Elaborator:
    def __init__(self, src: ArchSource, settings: Settings):
        self.src = src
        self.settings = settings
        self.policy: ScalingPolicy = get_policy(settings.policy or src.policy)
        self.budget = Budget(self.error)
        self.nesting = 0  # bodies being elaborated inside one another (block calls, repeats, residuals)
        self.used: set[str] = set()
        self.call_stack: list[str] = []
        self.defaults: dict[str, int] = {}
        self._memo = Memo(self.defaults)  # evaluation at the default widths, filled in by run()

    @property
    def layer_count(self) -> int:
        return self.budget.layers

    # ---- errors and expressions -------------------------------------------------------------
    def pos(self, meta) -> SourcePos:
        return self.src.pos(meta)

    def error(self, message: str, meta) -> DSLError:
        return DSLError(message, pos=self.src.pos(meta))

    def expr(self, tree, scope: _Scope, state: State | None) -> Expr:
        value = self.value(tree, scope, state)
        if isinstance(value, Word):
            # A bare name that was let through as a keyword (`act = swish`) but is used as a number.
            raise self.error(f"`{value.name}` is not defined" + suggest(value.name, scope.names() | {"in"}),
                             tree.meta)
        if isinstance(value, Flag):
            raise self.error(f"`{value.name}` is a boolean, not a number; booleans are only for yes/no "
                             "settings such as `bias = true`", tree.meta)
        return value

    def value(self, tree, scope: _Scope, state: State | None):
        """Evaluate an expression tree to an Expr (or a Word for an undefined bare name, if allowed, or a
        Flag for `true`/`false`)."""
        kind = tree.data
        self.budget.spend(tree.meta)
        try:
            if kind == "number":
                return self.number(tree)
            if kind == "var":
                return self.lookup(str(tree.children[0]), tree, scope, state)
            if kind == "neg":
                return self.bounded(op("neg", self.expr(tree.children[0], scope, state)), tree.meta)
            if kind in ("add", "sub", "mul", "truediv", "floordiv", "mod"):
                a, b = (self.expr(c, scope, state) for c in tree.children)
                return self.bounded(op(kind, a, b), tree.meta)
            if kind == "func":
                return self.call_function(tree, scope, state)
        except ExprError as err:
            raise self.error(f"cannot evaluate this expression: {err}", tree.meta) from None
        raise self.error(f"unexpected expression `{kind}`", tree.meta)

    def number(self, tree) -> Const:
        text = str(tree.children[0])
        number = float(text)
        if not math.isfinite(number) or abs(number) > MAX_NUMBER:
            raise self.error(f"the number {shorten(text, 40)} is too large (limit 2**62)", tree.meta)
        return Const(int(number) if number.is_integer() and "." not in text and "e" not in text.lower()
                     else number)

    def bounded(self, expr: Expr, meta) -> Expr:
        """`expr`, unless it is too deep or large to evaluate safely (it can grow without bound through
        `let`s and through `in` from layer to layer)."""
        if isinstance(expr, Op) and (expr.depth > MAX_EXPR_DEPTH or expr.size > MAX_EXPR_NODES):
            grown = (f"deeper than {MAX_EXPR_DEPTH} nested operations" if expr.depth > MAX_EXPR_DEPTH
                     else f"past {MAX_EXPR_NODES} terms and operations")
            raise self.error(f"the width expression `{_shown(expr)}` has grown {grown} (built up through "
                             "`let`s, or through `in` from layer to layer)", meta)
        return expr

    def at_defaults(self, expr: Expr, meta) -> Number:
        """The value at the default widths (each distinct node computed once per elaboration)."""
        try:
            return self._memo.value(expr)
        except ExprError as err:
            raise self.error(f"cannot evaluate `{_shown(expr)}` at the default widths: {err}", meta) from None

    def lookup(self, name: str, tree, scope: _Scope, state: State | None):
        if name == "in":
            if state is None or state.ch is None:
                raise self.error("`in` (the current channel count) is not available here", tree.meta)
            return state.ch
        if name == "block_in":
            if state is None or state.block_in is None:
                raise self.error("`block_in` is only available inside a block", tree.meta)
            return state.block_in
        if name in ("true", "false"):
            return Flag(name == "true")
        try:
            value = scope.lookup(name)
        except KeyError:
            raise self.error(f"`{name}` is not defined" + suggest(name, scope.names() | {"in"}), tree.meta) from None
        self.used.add(name)
        return value

    def call_function(self, tree, scope: _Scope, state: State | None) -> Expr:
        fname = str(tree.children[0])
        args = [c for c in tree.children[1:] if isinstance(c, lark.Tree)]
        if fname == "first":
            if len(args) != 2:
                raise self.error("first(a, b) takes two arguments", tree.meta)
            if state is None or state.first is None:
                raise self.error("first(a, b) is only meaningful inside repeat(...) { }", tree.meta)
            return self.value(args[0] if state.first else args[1], scope, state)
        if fname not in FUNCTIONS:
            raise self.error(f"unknown function `{fname}`" + suggest(fname, list(FUNCTIONS) + ["first"]),
                             tree.meta)
        lo, hi = FUNCTIONS[fname][:2]
        if not lo <= len(args) <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            raise self.error(f"{fname}() takes {want} arguments, got {len(args)}", tree.meta)
        return self.bounded(op(fname, *(self.expr(a, scope, state) for a in args)), tree.meta)

    def expr_value(self, value, meta) -> Expr:
        """A bound argument that must be a number/width, not a keyword or a boolean."""
        if isinstance(value, Word):
            raise self.error(f"`{value.name}` is not defined", meta)
        if isinstance(value, Flag):
            raise self.error(f"`{value.name}` is a boolean, not a width or a number", meta)
        if isinstance(value, (int, float)):
            return Const(value)
        return value

    def static_int(self, value, what: str, meta, minimum: int = 0) -> int:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = Const(value)
        if isinstance(value, Flag):
            raise self.error(f"{what} must be a number, not the boolean `{value.name}`", meta)
        if isinstance(value, Word) or not isinstance(value, Const):
            shown = value.name if isinstance(value, Word) else _shown(value)
            raise self.error(f"{what} must be a number known before widths are chosen, not `{shown}`", meta)
        if not float(value.value).is_integer():
            raise self.error(f"{what} must be a whole number, got {value.value}", meta)
        number = int(value.value)
        if number < minimum:
            raise self.error(f"{what} must be at least {minimum}, got {number}", meta)
        return number

    def static_flag(self, value, what: str, meta) -> bool:
        """A yes/no setting: `true`/`false`, or 1/0."""
        if isinstance(value, Flag):
            return value.value
        number = self.static_int(value, what, meta)
        if number not in (0, 1):
            raise self.error(f"{what} is a yes/no setting: write true or false, not {number}", meta)
        return bool(number)

    def check_width(self, expr: Expr, what: str, meta) -> Expr:
        """Widths must be integer-valued, positive and sane at the default widths."""
        try:
            value = self._memo.value(expr)
            integral = self._memo.integral(expr)
        except ExprError as err:
            raise self.error(f"cannot evaluate {what}: {err}", meta) from None
        if not integral:
            raise self.error(f"{what} `{_shown(expr)}` may not be a whole number; wrap it in round(), "
                             "int() or make_divisible()", meta)
        if value < 1:
            raise self.error(f"{what} is {value} at the default widths; it must be at least 1", meta)
        if value > MAX_WIDTH:
            raise self.error(f"{what} is {value} at the default widths, which is absurd (limit {MAX_WIDTH})",
                             meta)
        return expr

    # ---- top level --------------------------------------------------------------------------
    def run(self) -> ir.Network:
        src, settings = self.src, self.settings
        check_declarations(src, LAYER_SPECS)
        raw: dict[str, object] = dict(src.params)
        if settings.variant is not None:
            if settings.variant not in src.variants:
                raise DSLError(f"{src.name} has no variant `{settings.variant}`"
                               + (f"; variants: {', '.join(src.variants)}" if src.variants else ""))
            raw.update(src.variants[settings.variant])
        header = _Scope({})
        values: dict[str, Number] = dict(STANDARD_PARAMS)
        written: dict[str, SourcePos] = {}  # where each parameter's value is written (not for overrides)
        for pname, tree in raw.items():
            values[pname] = self.static_number(self.expr(tree, header, None), pname, tree.meta)
            written[pname] = self.src.pos(tree.meta)
        for pname, value in settings.params.items():
            if pname not in values:
                raise DSLError(f"{src.name} has no parameter `{pname}`" + suggest(pname, values)
                               + f" (parameters: {', '.join(sorted(values))})")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DSLError(f"parameter `{pname}` must be a finite number, got {value!r}")
            values[pname] = value
            written.pop(pname, None)
        base_res = _header_int(values, "resolution", written, MAX_RESOLUTION)
        resolution = settings.resolution if settings.resolution is not None else base_res
        if not 1 <= resolution <= MAX_RESOLUTION:
            raise DSLError(f"input resolution {resolution} is out of range (1..{MAX_RESOLUTION})")
        values["resolution"] = resolution
        in_channels = _header_int(values, "in_channels", written, MAX_WIDTH)
        top = _Scope({k: Const(v) for k, v in values.items()})

        symbols: list[ir.WidthSymbol] = []
        for decl in src.widths:
            value = self.expr(decl.value, top, None)
            default = self.static_int(value, f"the default of `{decl.name}`", decl.value.meta, minimum=1)
            if default > MAX_WIDTH:
                raise DSLError(f"width `{decl.name}` = {default} is absurd (limit {MAX_WIDTH})", pos=decl.pos)
            minimum = 1
            if decl.minimum is not None:
                minimum = self.static_int(self.expr(decl.minimum, top, None), f"the minimum of `{decl.name}`",
                                          decl.minimum.meta, minimum=1)
                if minimum > default:
                    raise DSLError(f"width `{decl.name}` has minimum {minimum} above its default {default}",
                                   pos=decl.pos)
            symbols.append(ir.WidthSymbol(decl.name, default, decl.searchable, decl.roles, decl.pos, minimum))
            top.values[decl.name] = Sym(decl.name) if decl.searchable else Const(default)
            self.defaults[decl.name] = default
        for lname, tree, _pos in src.lets:
            top.values[lname] = self.value(tree, top, None)

        state = State(ch=Const(in_channels), hw=(resolution, resolution))
        layers = self.statements(src.body, top, state, Namer())
        for sym in symbols:
            if sym.name not in self.used:
                raise DSLError(f"width symbol `{sym.name}` is declared but never used", pos=sym.pos)
        out = state.ch if state.ch is not None else Const(0)
        return ir.Network(name=src.name, variant=settings.variant, params=values, policy=self.policy.name,
                          symbols=symbols, layers=layers, in_channels=in_channels, resolution=resolution,
                          depth_mult=settings.depth_mult, out_features=out, source_file=src.filename)

    def static_number(self, value: Expr, what: str, meta) -> Number:
        if not isinstance(value, Const):
            raise self.error(f"parameter `{what}` must be a number", meta)
        return value.value

    # ---- statements -------------------------------------------------------------------------
    def statements(self, stmts, scope: _Scope, state: State, namer: Namer) -> list[ir.Node]:
        nodes: list[ir.Node] = []
        for stmt in stmts:
            kind = stmt.data
            self.budget.spend(stmt.meta)
            if kind == "empty":
                continue
            if kind == "let_decl":
                scope.values[str(stmt.children[0])] = self.value(stmt.children[1], scope, state)
            elif kind == "repeat":
                nodes += self.repeat(stmt, scope, state, namer)
            elif kind == "residual":
                nodes.append(self.residual(stmt, scope, state, namer))
            elif kind == "concat":
                nodes.append(self.concat(stmt, scope, state, namer))
            else:
                nodes += self.call(stmt, scope, state, namer)
        return nodes

    def bind_args(self, stmt, names, defaults, words, scope, state, what: str,
                  any_word: bool = False) -> dict[str, object]:
        """Bind a call's arguments to `names`. A bare undefined name becomes a `Word` for the parameters in
        `words`, or for every parameter with `any_word` (a user block passes words on to its layers)."""
        args_tree = next((c for c in stmt.children if isinstance(c, lark.Tree) and c.data == "args"), None)
        args = [a for a in args_tree.children if isinstance(a, lark.Tree)] if args_tree is not None else []
        bound: dict[str, object] = {}
        positional = True
        for a in args:
            if a.data == "kw_arg":
                positional = False
                key, tree = str(a.children[0]), a.children[1]
                if key not in names:
                    raise self.error(f"{what} has no parameter `{key}`" + suggest(key, names)
                                     + (f" (parameters: {', '.join(names)})" if names else ""), a.meta)
            else:
                if not positional:
                    raise self.error("a positional argument cannot follow a keyword argument", a.meta)
                if len(bound) >= len(names):
                    raise self.error(f"{what} takes at most {len(names)} arguments", a.meta)
                key, tree = names[len(bound)], a.children[0]
            if key in bound:
                raise self.error(f"{what} got `{key}` twice", a.meta)
            if tree.data == "var" and (key in words or any_word):
                name = str(tree.children[0])
                try:
                    bound[key] = self.lookup(name, tree, scope, state)
                except DSLError:
                    bound[key] = Word(name)
            else:
                bound[key] = self.value(tree, scope, state)
        for key in names:
            if key not in bound:
                if key not in defaults:
                    raise self.error(f"{what} needs `{key}`", stmt.meta)
                bound[key] = defaults[key]
        return bound

    def call(self, stmt, scope: _Scope, state: State, namer: Namer) -> list[ir.Node]:
        name = str(stmt.children[0])
        if name in self.src.blocks:
            return self.call_block(self.src.blocks[name], stmt, scope, state, namer)
        if name not in LAYER_SPECS:
            options = list(LAYER_SPECS) + list(self.src.blocks)
            raise self.error(f"unknown layer or block `{name}`" + suggest(name, options), stmt.meta)
        names, defaults, words = LAYER_SPECS[name]
        args = self.bind_args(stmt, names, defaults, words, scope, state, f"`{name}`")
        self.budget.layer(stmt.meta)
        try:
            nodes = make_layer(self, name, args, state, namer, stmt)
        except ExprError as err:  # a shape rule's own arithmetic (dwconv's multiplier, flatten's product)
            raise self.error(f"cannot evaluate `{name}`: {err}", stmt.meta) from None
        if state.ch is not None:
            self.bounded(state.ch, stmt.meta)
        return nodes

    def enter(self, meta) -> None:
        """One body deeper (a block call, repeat or residual); `leave` undoes it."""
        self.nesting += 1
        if self.nesting > MAX_NESTING:
            raise self.error(nesting_message(), meta)

    def leave(self) -> None:
        self.nesting -= 1

    def call_block(self, block: BlockDef, stmt, scope, state: State, namer: Namer) -> list[ir.Node]:
        if block.name in self.call_stack:
            raise self.error(f"block `{block.name}` calls itself (recursion is not allowed)", stmt.meta)
        defaults = {k: v for k, v in block.defaults.items()}
        args = self.bind_args(stmt, block.params, defaults, (), scope, state, f"block `{block.name}`",
                              any_word=True)
        for key, value in list(args.items()):
            if isinstance(value, lark.Tree):  # a default: evaluated in the block's definition scope
                args[key] = self.value(value, _Scope(dict(args), self.top_scope(scope)), state)
        inner = State(ch=state.ch, hw=state.hw, first=state.first, block_in=state.ch)
        self.enter(stmt.meta)
        self.call_stack.append(block.name)
        nodes = self.statements(block.body, _Scope(dict(args), self.top_scope(scope)), inner,
                                Namer(f"{namer(block.name)}."))
        self.call_stack.pop()
        self.leave()
        state.ch, state.hw = inner.ch, inner.hw
        return nodes

    @staticmethod
    def top_scope(scope: _Scope) -> _Scope:
        while scope.parent is not None:
            scope = scope.parent
        return scope

    def repeat(self, stmt, scope, state: State, namer: Namer) -> list[ir.Node]:
        count_tree = stmt.children[0]
        count = self.static_int(self.expr(count_tree, scope, state), "a repeat count", count_tree.meta, 1)
        if count > MAX_REPEAT:
            raise self.error(f"repeat count {count} is absurd (limit {MAX_REPEAT})", count_tree.meta)
        scaled = self.policy.depth(count, self.settings.depth_mult)
        if scaled > MAX_REPEAT:
            raise self.error(f"repeat count {scaled} after depth scaling is absurd (limit {MAX_REPEAT})",
                             count_tree.meta)
        nodes: list[ir.Node] = []
        body = [c for c in stmt.children[1:] if isinstance(c, lark.Tree)]
        outer_first = state.first
        self.enter(stmt.meta)
        for i in range(scaled):
            self.budget.spend(stmt.meta)  # an empty pass is work too: repeat(1000) { repeat(1000) { } }
            state.first = i == 0
            nodes += self.statements(body, _Scope({}, scope), state, namer)
        self.leave()
        state.first = outer_first
        return nodes

    def residual(self, stmt, scope, state: State, namer: Namer) -> ir.Residual:
        names, defaults, words = RESIDUAL_SPEC
        args = self.bind_args(stmt, names, defaults, words, scope, state, "`residual`")
        mode = args["shortcut"].name if isinstance(args["shortcut"], Word) else str(args["shortcut"])
        if mode not in SHORTCUTS:
            raise self.error(f"unknown shortcut `{mode}`; choose one of {', '.join(SHORTCUTS)}"
                             + suggest(mode, SHORTCUTS), stmt.meta)
        bias = self.static_flag(args["bias"], "bias", stmt.meta)
        always = self.static_flag(args["always"], "always", stmt.meta)
        if always and mode not in ("conv", "conv_bn"):
            raise self.error("residual(always = 1) needs a projection shortcut (conv or conv_bn)", stmt.meta)
        if state.hw is None:
            raise self.error("a residual block needs a spatial (conv) input, not a flattened one", stmt.meta)
        in_ch, in_hw = state.ch, state.hw
        body_stmts = [c for c in stmt.children if isinstance(c, lark.Tree) and c.data not in ("args", "shortcut_block")]
        block = next((c for c in stmt.children if isinstance(c, lark.Tree) and c.data == "shortcut_block"), None)
        if block is not None:
            return self.explicit_shortcut(stmt, block, body_stmts, scope, state, namer, args)
        self.enter(stmt.meta)
        body = self.statements(body_stmts, _Scope({}, scope), state, namer)
        self.leave()
        if state.hw is None:
            raise self.error("a residual body must keep a spatial output (no flatten/linear inside)", stmt.meta)
        out_ch, out_hw = state.ch, state.hw
        stride = max(1, math.ceil(in_hw[0] / out_hw[0]))
        if (in_hw[0] - 1) // stride + 1 != out_hw[0] or (in_hw[1] - 1) // stride + 1 != out_hw[1]:
            raise self.error(f"the residual body turns {in_hw[0]}x{in_hw[1]} into {out_hw[0]}x{out_hw[1]}, "
                             "which no strided 1x1 shortcut can match", stmt.meta)
        differs = Const(1) if stride != 1 or always else op("ne", in_ch, out_ch)
        name = namer("residual")
        shortcut: list[ir.Node] = []
        if mode == "identity":
            if stride != 1:
                raise self.error(f"identity shortcut, but the body has stride {stride}; "
                                 "use residual(shortcut = conv) or conv_bn", stmt.meta)
            a, b = self.at_defaults(in_ch, stmt.meta), self.at_defaults(out_ch, stmt.meta)
            if a != b:
                raise self.error(f"width mismatch at identity add: block input `{_shown(in_ch)}` is {a} "
                                 f"but the body outputs `{_shown(out_ch)}` = {b}; "
                                 "use residual(shortcut = conv) for a projection", stmt.meta)
        elif mode == "partial":
            self.check_partial(stmt, in_ch, out_ch, stride, bias)
        elif mode in ("conv", "conv_bn"):
            pos = self.src.pos(stmt.meta)
            shortcut.append(ir.Conv(f"{name}.shortcut.conv", in_ch, out_ch, 1, stride, 0, Const(1), bias,
                                    in_hw, out_hw, pos))
            if mode == "conv_bn":
                shortcut.append(ir.BatchNorm(f"{name}.shortcut.bn", out_ch, True, pos))
        self.budget.layer(stmt.meta, 1 + len(shortcut))  # the add node and its projection count as layers
        return ir.Residual(name, body, shortcut, "project" if mode.startswith("conv") else mode, in_ch, out_ch,
                           stride, differs if mode not in ("identity", "partial") else Const(0),
                           self.src.pos(stmt.meta))

    def check_partial(self, stmt, in_ch: Expr, out_ch: Expr, stride: int, bias: bool) -> None:
        """`residual(shortcut = partial)`: the input is added into the first `in` channels of the body's
        output, the rest pass (ReXNet), so the body keeps the size and is at least as wide as its input."""
        if stride != 1:
            raise self.error(f"a partial residual adds its input unchanged, but the body has stride {stride}; "
                             "only a stride-1 body can take it", stmt.meta)
        if bias:
            raise self.error("residual(bias = ...) sets a projection's bias; a partial residual has none", stmt.meta)
        a, b = self.at_defaults(in_ch, stmt.meta), self.at_defaults(out_ch, stmt.meta)
        if b < a:
            raise self.error(f"a partial residual adds the block input (`{_shown(in_ch)}` = {a} channels) into the "
                             f"first channels of the body's output, but the body outputs only "
                             f"`{_shown(out_ch)}` = {b}", stmt.meta)


def _concat(self, stmt, scope, state: State, namer: Namer) -> ir.Concat:
    """Each branch elaborates from the same input state; their widths add up, their sizes must agree."""
    if state.hw is None:
        raise self.error("`concat` joins spatial feature maps; its input was already flattened", stmt.meta)
    branches = [c for c in stmt.children if isinstance(c, lark.Tree) and c.data == "branch"]
    if len(branches) < 2:
        raise self.error("`concat` needs at least two `branch { }` blocks", stmt.meta)
    name = namer("concat")
    in_ch, in_hw = state.ch, state.hw
    bodies: list[list[ir.Node]] = []
    out: Expr | None = None
    out_hw = None
    self.enter(stmt.meta)
    for branch in branches:
        inner = State(ch=in_ch, hw=in_hw, first=state.first, block_in=state.block_in)
        body = [c for c in branch.children if isinstance(c, lark.Tree)]
        bodies.append(self.statements(body, _Scope({}, scope), inner, namer))
        if inner.hw is None:
            raise self.error("a concat branch must keep a spatial output (no flatten/linear inside)", branch.meta)
        if out_hw is not None and inner.hw != out_hw:
            raise self.error(f"concat branches disagree on the output size: {out_hw[0]}x{out_hw[1]} and "
                             f"{inner.hw[0]}x{inner.hw[1]}", branch.meta)
        out_hw = inner.hw
        out = inner.ch if out is None else self.bounded(op("add", out, inner.ch), stmt.meta)
    self.leave()
    state.ch, state.hw = out, out_hw
    return ir.Concat(name, bodies, in_ch, out, self.src.pos(stmt.meta))


Elaborator.concat = _concat


def _explicit_shortcut(self, stmt, block, body_stmts, scope, state: State, namer: Namer, args) -> ir.Residual:
    """`residual { body... shortcut { layers } }`: the add of the body and an explicit shortcut, always
    applied (e.g. ResNet-D's average pool + 1x1 conv + BN)."""
    if args["shortcut"] != RESIDUAL_SPEC[1]["shortcut"] or args["always"]:
        raise self.error("give either `shortcut = ...` or a `shortcut { }` block, not both", stmt.meta)
    in_ch, in_hw = state.ch, state.hw
    self.enter(stmt.meta)
    body = self.statements(body_stmts, _Scope({}, scope), state, namer)
    inner = State(ch=in_ch, hw=in_hw, first=state.first, block_in=state.block_in)
    shortcut = self.statements([c for c in block.children if isinstance(c, lark.Tree)], _Scope({}, scope),
                               inner, namer)
    self.leave()
    if state.hw is None or inner.hw is None:
        raise self.error("a residual body and its shortcut must keep a spatial output", stmt.meta)
    if inner.hw != state.hw:
        raise self.error(f"the shortcut gives {inner.hw[0]}x{inner.hw[1]} but the body {state.hw[0]}x{state.hw[1]}",
                         block.meta)
    a, b = self.at_defaults(inner.ch, block.meta), self.at_defaults(state.ch, block.meta)
    if a != b:
        raise self.error(f"the shortcut gives {a} channels (`{_shown(inner.ch)}`) but the body {b} "
                         f"(`{_shown(state.ch)}`)", block.meta)
    stride = max(1, math.ceil(in_hw[0] / state.hw[0]))
    self.budget.layer(stmt.meta, 1)  # the add node
    return ir.Residual(namer("residual"), body, shortcut, "project", in_ch, state.ch, stride, Const(1),
                       self.src.pos(stmt.meta))


Elaborator.explicit_shortcut = _explicit_shortcut


def _header_int(values: dict[str, Number], name: str, written: dict[str, SourcePos], limit: int) -> int:
    """A header parameter that must be a whole number in 1..limit, reported where its value is written."""
    value = values[name]
    pos = written.get(name)
    if not float(value).is_integer():
        raise DSLError(f"`{name}` must be a whole number, got {value}", pos=pos)
    if not 1 <= value <= limit:
        shown = "input resolution" if name == "resolution" else name
        raise DSLError(f"{shown} {int(value)} is out of range (1..{limit})", pos=pos)
    return int(value)


def elaborate(src: ArchSource, settings: Settings | None = None) -> ir.Network:
    return Elaborator(src, settings or Settings()).run()
