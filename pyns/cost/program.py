"""Compile an IR network's cost formulas into a flat program for the C++ evaluator (csrc/cost_program.h).

Expressions are hash-consed, so a width expression shared by many layers (e.g. `6 * c3`) is computed once.
"""
from __future__ import annotations

import numpy as np

from pyns import _core, ir
from pyns.cost.formulas import counted_layers
from pyns.dsl.expr import Const, Expr, Sym, op

# Keep in sync with enum Op in csrc/cost_program.h.
OPCODES = {name: i for i, name in enumerate(
    ["add", "sub", "mul", "truediv", "floordiv", "mod", "neg", "round", "int", "floor", "ceil",
     "make_divisible", "max", "min", "ne"])}
# make_divisible(v, divisor=8, min_value=None, round_limit=0.9); min_value 0 means "use the divisor".
_MAKE_DIVISIBLE_DEFAULTS = (8.0, 0.0, 0.9)


class ProgramBuilder:
    def __init__(self, symbols: list[str]):
        self.symbols = symbols
        self.constants: list[float] = []
        self.const_index: dict[float, int] = {}
        self.instructions: list[tuple[int, ...]] = []
        self.memo: dict[Expr, tuple[str, int]] = {}

    def const(self, value: float) -> tuple[str, int]:
        value = float(value)
        if value not in self.const_index:
            self.const_index[value] = len(self.constants)
            self.constants.append(value)
        return ("const", self.const_index[value])

    def emit(self, expr: Expr) -> tuple[str, int]:
        """Return a symbolic register reference ('const'|'input'|'temp', index) holding expr."""
        if isinstance(expr, Const):
            return self.const(expr.value)
        if isinstance(expr, Sym):
            return ("input", self.symbols.index(expr.name))
        if expr in self.memo:
            return self.memo[expr]
        args = [self.emit(a) for a in expr.args]
        if expr.op == "make_divisible":
            args += [self.const(v) for v in _MAKE_DIVISIBLE_DEFAULTS[len(args) - 1:]]
        while len(args) < 4:
            args.append(args[0])  # unused slots point at a valid register
        ref = ("temp", len(self.instructions))
        self.instructions.append((OPCODES[expr.op], ref, *args))
        self.memo[expr] = ref
        return ref

    def resolve(self, ref: tuple[str, int]) -> int:
        kind, index = ref
        if kind == "const":
            return index
        n_const = len(self.constants)
        if kind == "input":
            return n_const + index
        return n_const + len(self.symbols) + index


def compile_program(network: ir.Network):
    """-> (pyns._core.CostProgram, layer names). Inputs are the values of `network.symbol_names`."""
    builder = ProgramBuilder(network.symbol_names)
    outputs = []
    names = []
    for layer, times, params, macs in counted_layers(network):
        if times != Const(1):
            params, macs = op("mul", params, times), op("mul", macs, times)
        outputs.append((builder.emit(params), builder.emit(macs)))
        names.append(layer.name)
    code = np.array([[i[0], *(builder.resolve(r) for r in i[1:])] for i in builder.instructions],
                    dtype=np.int32).reshape(-1, 6)  # [n_instr, (op, dst, a, b, c, d)]
    n_registers = len(builder.constants) + len(network.symbols) + len(builder.instructions)
    program = _core.CostProgram(
        code.ravel(), np.array(builder.constants, dtype=np.float64), len(network.symbols), n_registers,
        np.array([builder.resolve(p) for p, _ in outputs], dtype=np.int32),
        np.array([builder.resolve(m) for _, m in outputs], dtype=np.int32))
    return program, names


__all__ = ["compile_program", "OPCODES"]
