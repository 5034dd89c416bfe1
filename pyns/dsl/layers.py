"""The built-in layers of the .arch language: argument checks, shape rules and IR construction."""
from __future__ import annotations

from pyns import ir
from pyns.dsl.context import ACTIVATIONS, LayerContext, Namer, State
from pyns.dsl.expr import Const, Expr, op

POOLS = {"maxpool": "max", "avgpool": "avg"}


def _out_size(size: int, k: int, s: int, p: int, d: int = 1, ceil: bool = False) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    if not ceil:
        return span // s + 1  # floor((H + 2p - k) / s) + 1 (SPEC §3) at dilation 1
    out = -(-span // s) + 1
    return out - 1 if (out - 1) * s >= size + p else out  # torch: the last window must start inside


def _spatial(el: LayerContext, state: State, what: str, stmt) -> tuple[int, int]:
    if state.hw is None:
        raise el.error(f"`{what}` needs a spatial input, but the input was already flattened", stmt.meta)
    return state.hw


def _shrink(el, state, stmt, what: str, k: int, s: int, p: int, d: int = 1, ceil: bool = False) -> tuple[int, int]:
    h, w = _spatial(el, state, what, stmt)
    out = (_out_size(h, k, s, p, d, ceil), _out_size(w, k, s, p, d, ceil))
    if min(out) < 1:
        raise el.error(f"spatial size reaches zero at `{what}`: input {h}x{w}, kernel {k}, stride {s}, "
                       f"padding {p}", stmt.meta)
    return out


def _word(value) -> str:
    return getattr(value, "name", value)  # a Word or a plain default string


def make_layer(el: LayerContext, kind: str, args: dict, state: State, namer: Namer, stmt) -> list[ir.Node]:
    pos = el.pos(stmt.meta)
    meta = stmt.meta
    if kind in ("conv", "dwconv"):
        k = el.static_int(args["k"], "the kernel size", meta, 1)
        s = el.static_int(args["stride"], "the stride", meta, 1)
        d = el.static_int(args["dilation"], "the dilation", meta, 1)
        p = d * (k // 2) if args["pad"] is None else el.static_int(args["pad"], "the padding", meta, 0)
        bias = el.static_flag(args["bias"], "bias", meta)
        in_ch = state.ch
        if kind == "dwconv":
            mult = el.static_int(args["mult"], "the depth multiplier", meta, 1)
            out_ch: Expr = op("mul", in_ch, Const(mult)) if mult != 1 else in_ch
            groups: Expr = in_ch
        else:
            out_ch = el.check_width(el.expr_value(args["out"], meta), "the output width", meta)
            groups = el.expr_value(args["groups"], meta)
        _check_groups(el, in_ch, out_ch, groups, meta)
        out_hw = _shrink(el, state, stmt, kind, k, s, p, d)
        node = ir.Conv(namer("conv"), in_ch, out_ch, k, s, p, groups, bias, state.hw, out_hw, pos, dilation=d)
        state.ch, state.hw = out_ch, out_hw
        return [node]
    if kind == "bn":
        return [ir.BatchNorm(namer("bn"), state.ch, state.hw is not None, pos,
                             eps=_eps(el, args["eps"], "bn(eps) needs a small positive number, e.g. bn(eps = 0.001)",
                                      meta))]
    if kind in POOLS:
        k = el.static_int(args["k"], "the kernel size", meta, 1)
        s = k if args["stride"] is None else el.static_int(args["stride"], "the stride", meta, 1)
        p = el.static_int(args["pad"], "the padding", meta, 0)
        if 2 * p > k:
            raise el.error(f"padding {p} is more than half the kernel {k}", meta)
        ceil = el.static_flag(args["ceil"], "ceil", meta)
        exclude = el.static_flag(args["exclude_pad"], "exclude_pad", meta) if "exclude_pad" in args else False
        in_hw = _spatial(el, state, kind, stmt)
        out_hw = _shrink(el, state, stmt, kind, k, s, p, 1, ceil)
        state.hw = out_hw
        return [ir.Pool(namer(kind), POOLS[kind], k, s, p, state.ch, in_hw, out_hw, pos, ceil=ceil,
                        exclude_pad=exclude)]
    if kind in ("gap", "adaptive_avgpool"):
        in_hw = _spatial(el, state, kind, stmt)
        size = 1 if kind == "gap" else el.static_int(args["size"], "the output size", meta, 1)
        state.hw = (size, size)
        return [ir.Pool(namer("pool"), "adaptive_avg", 0, 0, 0, state.ch, in_hw, (size, size), pos)]
    if kind == "flatten":
        h, w = _spatial(el, state, kind, stmt)
        features = op("mul", state.ch, Const(h * w)) if h * w != 1 else state.ch
        node = ir.Flatten(namer("flatten"), state.ch, features, pos)
        state.ch, state.hw = features, None
        return [node]
    if kind == "linear":
        if state.hw is not None:
            raise el.error("`linear` needs a flattened input; add `flatten` (after `gap`) before it", meta)
        out = el.check_width(el.expr_value(args["out"], meta), "the output width", meta)
        bias = el.static_flag(args["bias"], "bias", meta)
        node = ir.Linear(namer("linear"), state.ch, out, bias, pos)
        state.ch = out
        return [node]
    if kind == "dropout":
        p = args["p"]
        value = p.value if isinstance(p, Const) else None
        if value is None or not 0 <= value < 1:
            raise el.error("dropout(p) needs a probability in [0, 1)", meta)
        return [ir.Dropout(namer("dropout"), float(value), pos)]
    if kind == "se":
        _spatial(el, state, kind, stmt)
        if args["reduced"] is None:
            # SE ratio 0.25 of the *block input* width, as timm's EfficientNet (SPEC §4).
            base = state.block_in if state.block_in is not None else state.ch
            reduced: Expr = op("round", op("mul", Const(0.25), base))
        else:
            reduced = el.expr_value(args["reduced"], meta)
        reduced = el.check_width(reduced, "the squeeze width", meta)
        act, gate = _word(args["act"]), _word(args["gate"])
        for what, value in (("act", act), ("gate", gate)):
            if value not in ACTIVATIONS:
                raise el.error(f"se({what} = {value}): unknown activation; choose one of {', '.join(ACTIVATIONS)}",
                               meta)
        return [ir.SqueezeExcite(namer("se"), state.ch, reduced, act, gate, pos,
                                 bn=el.static_flag(args["bn"], "bn", meta))]
    if kind in IMPORT_LAYERS:
        return _import_layer(el, kind, args, state, namer, stmt, pos)
    # activations
    return [ir.Activation(namer(kind), kind, pos)]


def _eps(el: LayerContext, eps, message: str, meta) -> float:
    value = eps.value if isinstance(eps, Const) else eps if isinstance(eps, float) else None
    if value is None or not 0 < value < 1:
        raise el.error(message, meta)
    return float(value)


# Layers added for networks imported from torch (pyns.torch_import), usable in any .arch file.
IMPORT_LAYERS = ("slice", "shuffle", "layernorm", "channel_linear", "scale")


def _import_layer(el: LayerContext, kind: str, args: dict, state: State, namer: Namer, stmt, pos) -> list[ir.Node]:
    meta = stmt.meta
    if kind == "slice":
        start = el.expr_value(args["start"], meta)
        width = el.check_width(el.expr_value(args["width"], meta), "the slice width", meta)
        a, w, total = (el.at_defaults(e, meta) for e in (start, width, state.ch))
        if a < 0 or a + w > total:
            raise el.error(f"slice({a}, {w}) reaches past the {total} input channels", meta)
        node = ir.Slice(namer("slice"), start, width, state.ch, pos)
        state.ch = width
        return [node]
    if kind == "shuffle":
        _spatial(el, state, kind, stmt)
        g = el.static_int(args["groups"], "the shuffle group count", meta, 1)
        if el.at_defaults(state.ch, meta) % g:
            raise el.error(f"shuffle({g}) needs a channel count divisible by {g}", meta)
        return [ir.Shuffle(namer("shuffle"), g, state.ch, pos)]
    if kind == "layernorm":
        _spatial(el, state, kind, stmt)
        eps = _eps(el, args["eps"], "layernorm(eps) needs a small positive number, e.g. layernorm(eps = 0.000001)",
                   meta)
        return [ir.LayerNorm(namer("layernorm"), state.ch, eps, pos)]
    if kind == "channel_linear":
        hw = _spatial(el, state, kind, stmt)
        out = el.check_width(el.expr_value(args["out"], meta), "the output width", meta)
        node = ir.ChannelLinear(namer("channel_linear"), state.ch, out, el.static_flag(args["bias"], "bias", meta),
                                hw, pos)
        state.ch = out
        return [node]
    _spatial(el, state, kind, stmt)  # scale
    return [ir.Scale(namer("scale"), state.ch, pos)]


def _check_groups(el: LayerContext, in_ch: Expr, out_ch: Expr, groups: Expr, meta) -> None:
    g = el.at_defaults(groups, meta)
    i, o = el.at_defaults(in_ch, meta), el.at_defaults(out_ch, meta)
    if g < 1 or i % g or o % g:
        raise el.error(f"groups = {g} must divide both the input width {i} and the output width {o}", meta)
