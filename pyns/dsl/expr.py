"""Width expressions: the small symbolic language that every width, kernel and repeat count is written in.

An `Expr` is a frozen (hashable) tree over constants and width symbols. Constants fold as the tree is
built, so after elaboration an expression mentions only searchable/fixed width symbols. The same tree
is evaluated three ways: by `evaluate` (the pure-Python oracle and the builder), compiled into the C++
cost program (pyns.cost.program), and checked statically for integrality (`is_integral`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Union

Number = Union[int, float]


@dataclass(frozen=True)
class Const:
    value: Number


@dataclass(frozen=True)
class Sym:
    name: str


@dataclass(frozen=True)
class Op:
    op: str
    args: tuple["Expr", ...]
    # Size (nodes, counting a shared subtree once per use) and depth of the tree, kept as it is built so the
    # front end can refuse an expression that recursive evaluation could not handle, in O(1) per node.
    size: int = field(init=False, compare=False, repr=False)
    depth: int = field(init=False, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "size", 1 + sum(getattr(a, "size", 1) for a in self.args))
        object.__setattr__(self, "depth", 1 + max((getattr(a, "depth", 1) for a in self.args), default=0))


Expr = Union[Const, Sym, Op]


def make_divisible(v: Number, divisor: Number = 8, min_value: Number | None = None,
                   round_limit: Number = 0.9) -> int:
    """timm/torchvision channel rounding: nearest multiple of `divisor`, never more than 10% below `v`."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return int(new_v)


def _python_round(v: Number) -> int:
    return int(round(v))  # banker's rounding, as Python (and timm's depth policy) does


# name -> (min args, max args, implementation, result is an integer when args are)
FUNCTIONS: dict[str, tuple[int, int, Callable[..., Number], bool]] = {
    "round": (1, 1, _python_round, True),
    "int": (1, 1, lambda v: int(v), True),
    "floor": (1, 1, lambda v: int(math.floor(v)), True),
    "ceil": (1, 1, lambda v: int(math.ceil(v)), True),
    "make_divisible": (1, 4, make_divisible, True),
    "max": (2, 2, max, False),
    "min": (2, 2, min, False),
    "ne": (2, 2, lambda a, b: int(a != b), True),
}

_BINARY: dict[str, Callable[[Number, Number], Number]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "truediv": lambda a, b: a / b,
    "floordiv": lambda a, b: a // b,
    "mod": lambda a, b: a % b,
}
_UNARY: dict[str, Callable[[Number], Number]] = {"neg": lambda a: -a}

OPERATORS = set(_BINARY) | set(_UNARY) | set(FUNCTIONS)


class ExprError(ValueError):
    """Raised by evaluation (division by zero, overflow); the caller turns it into a positioned DSLError."""


def apply(op: str, values: list[Number]) -> Number:
    """Apply one operator to concrete values with Python semantics (the oracle's definition)."""
    try:
        if op in _BINARY:
            result = _BINARY[op](values[0], values[1])
        elif op in _UNARY:
            result = _UNARY[op](values[0])
        else:
            result = FUNCTIONS[op][2](*values)
    except ZeroDivisionError:
        raise ExprError("division by zero") from None
    except (OverflowError, ValueError) as err:
        raise ExprError(f"arithmetic error in {op}: {err}") from None
    if isinstance(result, float) and not math.isfinite(result):
        raise ExprError(f"{op} gave a non-finite value")
    if isinstance(result, int) and abs(result) > 2**62:
        # Beyond int64 the C++ engine cannot represent it; no real network gets near this.
        raise ExprError("value is astronomically large")
    return result


def op(name: str, *args: Expr) -> Expr:
    """Build an operator node, folding it to a constant when every argument is constant."""
    if name == "ne" and args[0] == args[1]:
        return Const(0)  # the same symbolic width on both sides: statically equal
    if name in ("truediv", "floordiv", "mod") and isinstance(args[1], Const) and args[1].value == 0:
        raise ExprError("division by zero")  # by a literal zero: wrong at every width, so say so now
    if all(isinstance(a, Const) for a in args):
        return Const(apply(name, [a.value for a in args]))  # type: ignore[union-attr]
    return Op(name, tuple(args))


def evaluate(expr: Expr, env: Mapping[str, Number]) -> Number:
    """Evaluate with concrete symbol values; the reference semantics for every other evaluator."""
    if isinstance(expr, Const):
        return expr.value
    if isinstance(expr, Sym):
        return env[expr.name]
    return apply(expr.op, [evaluate(a, env) for a in expr.args])


def size(expr: Expr) -> int:
    return expr.size if isinstance(expr, Op) else 1


def depth(expr: Expr) -> int:
    return expr.depth if isinstance(expr, Op) else 1


class Memo:
    """`evaluate` and `is_integral` at one fixed assignment, remembered per node: an expression built from
    already-seen parts costs O(its new nodes), however often the parts are shared."""

    def __init__(self, env: Mapping[str, Number]):
        self.env = env
        self._seen: dict[int, tuple[Expr, Number, bool]] = {}  # id -> (node kept alive, value, integral)

    def _visit(self, expr: Expr) -> tuple[Expr, Number, bool]:
        if isinstance(expr, Const):
            return expr, expr.value, float(expr.value).is_integer()
        if isinstance(expr, Sym):
            return expr, self.env[expr.name], True
        hit = self._seen.get(id(expr))
        if hit is None:
            parts = [self._visit(a) for a in expr.args]
            value = apply(expr.op, [p[1] for p in parts])
            if expr.op in ("add", "sub", "mul", "floordiv", "mod", "neg", "max", "min"):
                integral = all(p[2] for p in parts)
            else:
                integral = expr.op != "truediv" and FUNCTIONS[expr.op][3]
            hit = self._seen[id(expr)] = (expr, value, integral)
        return hit

    def value(self, expr: Expr) -> Number:
        return self._visit(expr)[1]

    def integral(self, expr: Expr) -> bool:
        return self._visit(expr)[2]


def symbols(expr: Expr) -> set[str]:
    if isinstance(expr, Sym):
        return {expr.name}
    if isinstance(expr, Op):
        out: set[str] = set()
        for a in expr.args:
            out |= symbols(a)
        return out
    return set()


def is_integral(expr: Expr) -> bool:
    """True when the expression yields an integer for every integer assignment of its symbols."""
    if isinstance(expr, Const):
        return float(expr.value).is_integer()
    if isinstance(expr, Sym):
        return True
    if expr.op in ("add", "sub", "mul", "floordiv", "mod", "neg", "max", "min"):
        return all(is_integral(a) for a in expr.args)
    if expr.op == "truediv":
        return False
    return FUNCTIONS[expr.op][3]


def to_source(expr: Expr) -> str:
    """Render an expression back as .arch source (for messages and resolved files)."""
    if isinstance(expr, Const):
        v = expr.value
        return str(int(v)) if isinstance(v, float) and v.is_integer() else repr(v)
    if isinstance(expr, Sym):
        return expr.name
    symbols_ = {"add": "+", "sub": "-", "mul": "*", "truediv": "/", "floordiv": "//", "mod": "%"}
    if expr.op in symbols_:
        a, b = (to_source(x) for x in expr.args)
        return f"({a} {symbols_[expr.op]} {b})"
    if expr.op == "neg":
        return f"-{to_source(expr.args[0])}"
    return f"{expr.op}({', '.join(to_source(a) for a in expr.args)})"
