"""Widths that residual adds tie together, read from the IR.

- An identity add (`residual(shortcut = identity)`) always adds its input to its body's output, so the
  two widths must be equal: `identity_adds` lists those residuals and `check_identity_adds` rejects widths
  that differ, with a DSLError at the residual in the .arch file (they could never be built).
- A stride-1 shortcut that exists only while two widths differ ties them while they are equal:
  `fill_pairs` lists every such pair (identity adds included), for the budget fill (pyns.scaling.solve),
  which moves tied widths together.
"""
from __future__ import annotations

from typing import Mapping

from pyns import ir
from pyns.dsl.expr import Const, Sym, evaluate, to_source
from pyns.errors import DSLError


def _residuals(network: ir.Network, mode: str | None = None) -> list[ir.Residual]:
    """Every residual of the tree (inside other residuals and concat branches too), of one shortcut mode
    when `mode` is given."""
    return [node for node in ir.every_node(network.layers)
            if isinstance(node, ir.Residual) and (mode is None or node.mode == mode)]


def identity_adds(network: ir.Network) -> list[ir.Residual]:
    """Every residual whose add always happens with an identity shortcut: its two widths must be equal."""
    return _residuals(network, "identity")


def check_identity_adds(network: ir.Network, widths: Mapping[str, int]) -> None:
    """Raise a DSLError at the residual when widths joined by an identity add differ (they cannot be built)."""
    for node in identity_adds(network):
        a, b = evaluate(node.in_ch, widths), evaluate(node.out_ch, widths)
        if a != b:
            raise DSLError(f"widths that cannot be built: this identity add joins `{to_source(node.in_ch)}` = "
                           f"{int(a) if float(a).is_integer() else a} and `{to_source(node.out_ch)}` = "
                           f"{int(b) if float(b).is_integer() else b}; the two are tied and must be equal",
                           pos=node.pos, hint="give both the same width, or use residual(shortcut = conv) "
                                              "for a projection")


def partial_adds(network: ir.Network) -> list[ir.Residual]:
    """Every partial residual (`residual(shortcut = partial)`): its output may not be narrower than its input."""
    return _residuals(network, "partial")


def check_partial_adds(network: ir.Network, widths: Mapping[str, int]) -> None:
    """Raise a DSLError at the residual when a partial add's body is narrower than its input at these widths."""
    for node in partial_adds(network):
        a, b = evaluate(node.in_ch, widths), evaluate(node.out_ch, widths)
        if b < a:
            raise DSLError(f"widths that cannot be built: this partial residual adds `{to_source(node.in_ch)}` = "
                           f"{int(a)} channels into the body's output `{to_source(node.out_ch)}` = {int(b)}",
                           pos=node.pos, hint="the body's output must be at least as wide as the block input")


def fill_pairs(network) -> list[tuple[int, int]]:
    """Symbol index pairs (program input order) that a residual ties while they are equal: an identity
    add, or a stride-1 shortcut that exists only while the two widths differ."""
    index = {name: i for i, name in enumerate(network.symbol_names)}
    return [(index[node.in_ch.name], index[node.out_ch.name]) for node in _residuals(network)
            if node.project_when != Const(1) and node.mode != "partial"
            and isinstance(node.in_ch, Sym) and isinstance(node.out_ch, Sym) and node.in_ch.name != node.out_ch.name]


__all__ = ["identity_adds", "check_identity_adds", "partial_adds", "check_partial_adds", "fill_pairs"]
