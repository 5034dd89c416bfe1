"""Reserved names: words the language gives a meaning of its own may not be declared by a file.

A declaration that reused one would be silently ignored or would silently change the network: a block
parameter `in` is shadowed by the current channel count, a block named `conv` replaces the built-in layer,
`let round = 2` hides a function. The reserved words are derived from the tables that define them (the layer
table passed in, the functions, the grammar's keywords), so a new layer kind is reserved as soon as it exists.
"""
from __future__ import annotations

from typing import Iterable

import lark

from pyns.dsl.context import BUILTIN_NAMES, SHORTCUTS
from pyns.dsl.declarations import ArchSource
from pyns.dsl.expr import FUNCTIONS
from pyns.dsl.parser import keywords
from pyns.errors import DSLError, SourcePos

SPECIAL_FUNCTIONS = ("first",)  # functions the elaborator handles itself (they need the repeat state)


def reserved_names(layer_names: Iterable[str]) -> dict[str, str]:
    """Each reserved word -> what it already means."""
    out: dict[str, str] = {}
    out.update((k, "a keyword of the language") for k in keywords())
    out.update((s, "a residual shortcut") for s in SHORTCUTS)
    out.update((f, "a function") for f in (*FUNCTIONS, *SPECIAL_FUNCTIONS))
    out.update((layer, "a built-in layer") for layer in layer_names)
    out.update(BUILTIN_NAMES)
    return out


def _refuse(name: str, what: str, meaning: str, pos: SourcePos) -> DSLError:
    return DSLError(f"`{name}` is a reserved name ({meaning}) and cannot be used as {what}; choose another name",
                    pos=pos)


def check_declarations(src: ArchSource, layer_names: Iterable[str]) -> None:
    """Refuse every declaration of a reserved name in `src`, at the declaration; statement-level `let`s are
    found in every block and the body, whether or not they are ever run."""
    reserved = reserved_names(layer_names)
    declared: list[tuple[str, str, SourcePos]] = []
    declared += [(n, "a network parameter", p) for n, p in src.param_pos.items()]
    declared += [(w.name, "a width symbol", w.pos) for w in src.widths]
    declared += [(n, "a `let` name", p) for n, _, p in src.lets]
    for block in src.blocks.values():
        declared.append((block.name, "a block name", block.pos))
        declared += [(n, "a block parameter", block.param_pos.get(n, block.pos)) for n in block.params]
    for name, what, pos in sorted(declared, key=lambda d: (d[2].line, d[2].column)):  # the first in the file
        if name in reserved:
            raise _refuse(name, what, reserved[name], pos)
    bodies = [b.body for b in src.blocks.values()] + [src.body or []]
    stack: list = [stmt for body in bodies for stmt in body]
    while stack:  # iterative: bodies may nest as deep as the limits allow
        node = stack.pop()
        if not isinstance(node, lark.Tree):
            continue
        if node.data == "let_decl":
            token = node.children[0]
            if str(token) in reserved:
                raise _refuse(str(token), "a `let` name", reserved[str(token)], src.pos(token))
        elif node.data in ("repeat", "residual"):
            stack.extend(node.children)
