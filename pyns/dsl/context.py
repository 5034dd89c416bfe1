"""What elaboration and the per-layer rules share: the words of the language, the values that are not width
expressions, the running state of one pass through a body, and the interface a layer rule sees.

It sits below both `pyns.dsl.elaborate` (which walks statements) and `pyns.dsl.layers` (which turns one layer
call into IR), so the layer rules need nothing from the module that calls them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pyns.dsl.expr import Expr, Number
from pyns.errors import DSLError, SourcePos

# leaky_relu is torch's default slope 0.01; hsigmoid is torch's Hardsigmoid (relu6(x + 3) / 6).
ACTIVATIONS = ("relu", "relu6", "swish", "silu", "hswish", "hsigmoid", "sigmoid", "gelu", "tanh", "leaky_relu")
# partial: ReXNet's `cat([out[:, :in] + x, out[:, in:]])`, the input added into the first `in` channels of a
# wider body output.
SHORTCUTS = ("identity", "conv", "conv_bn", "none", "partial")

# Names the language defines itself, with what they mean (for "reserved name" messages).
BUILTIN_NAMES = {
    "in": "the current channel count",
    "block_in": "the channel count entering the current block",
    "true": "a boolean",
    "false": "a boolean",
}


@dataclass(frozen=True)
class Word:
    """A bare name passed where a keyword is expected (`act = swish`), carried through block params."""

    name: str


@dataclass(frozen=True)
class Flag:
    """`true` or `false`: valid only where a layer takes a yes/no setting (`bias = true`), never as a number."""

    value: bool

    @property
    def name(self) -> str:
        return "true" if self.value else "false"


@dataclass
class State:
    """What flows from one statement to the next: channels (symbolic), spatial size (concrete, None once
    flattened), whether this is the first pass of the innermost repeat, and the current block's input width."""

    ch: Expr | None
    hw: tuple[int, int] | None
    first: bool | None = None
    block_in: Expr | None = None


class Namer:
    """Readable layer names: `preact3.conv2` — a counter per kind within each block invocation."""

    def __init__(self, prefix: str = ""):
        self.prefix = prefix
        self.counts: dict[str, int] = {}

    def __call__(self, kind: str) -> str:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return f"{self.prefix}{kind}{self.counts[kind]}"


class LayerContext(Protocol):
    """The elaborator as a layer rule sees it: positions, argument checks and default widths."""

    def pos(self, meta) -> SourcePos: ...

    def error(self, message: str, meta) -> DSLError: ...

    def static_int(self, value, what: str, meta, minimum: int = 0) -> int: ...

    def static_flag(self, value, what: str, meta) -> bool: ...

    def expr_value(self, value, meta) -> Expr: ...

    def check_width(self, expr: Expr, what: str, meta) -> Expr: ...

    def at_defaults(self, expr: Expr, meta) -> Number: ...
