"""Collect an .arch parse tree's declarations into an `ArchSource`: header, variants, widths, blocks.

This is the part of the front end that does not depend on settings (resolution, depth, overrides);
`pyns.dsl.elaborate` turns an ArchSource plus settings into the IR.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import lark

from pyns.dsl.parser import parse, source_pos
from pyns.dsl.source import strip_bom
from pyns.errors import DSLError, SourcePos
from pyns.policies import POLICIES

# Parameters every network has, whether or not its header names them.
STANDARD_PARAMS = {"resolution": 224, "in_channels": 3, "classes": 1000}


@dataclass
class BlockDef:
    name: str
    params: list[str]
    defaults: dict[str, lark.Tree]
    body: list[lark.Tree]
    pos: SourcePos
    param_pos: dict[str, SourcePos] = field(default_factory=dict)


@dataclass
class WidthDecl:
    name: str
    value: lark.Tree
    searchable: bool
    roles: tuple[str, ...]
    pos: SourcePos
    minimum: lark.Tree | None = None  # `[min = N]`: the smallest width the solvers may choose


@dataclass
class ArchSource:
    name: str
    text: str
    filename: str
    params: dict[str, lark.Tree]
    param_pos: dict[str, SourcePos]
    variants: dict[str, dict[str, lark.Tree]] = field(default_factory=dict)
    policy: str = "uniform"
    widths: list[WidthDecl] = field(default_factory=list)
    lets: list[tuple[str, lark.Tree, SourcePos]] = field(default_factory=list)
    blocks: dict[str, BlockDef] = field(default_factory=dict)
    body: list[lark.Tree] | None = None
    body_pos: SourcePos | None = None
    _lines: list[str] | None = field(default=None, init=False, repr=False, compare=False)

    def pos(self, meta) -> SourcePos:
        """The position of a parse-tree node or token. Every IR node records one, so the source is split
        into lines once, not once per layer."""
        line = getattr(meta, "line", 1) or 1
        column = getattr(meta, "column", 1) or 1
        if self._lines is None:
            self._lines = self.text.split("\n")  # '\n' only, as the parser counts lines
        return SourcePos(self.filename, line, column, self._lines[line - 1] if line <= len(self._lines) else "")


def suggest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean `{close[0]}`?" if close else ""


KNOWN_ROLES = ("stem", "head")


def _params(src_text: str, tree: lark.Tree | None) -> list[tuple[str, lark.Tree, lark.Tree]]:
    if tree is None:
        return []
    return [(str(p.children[0]), p.children[1], p) for p in tree.children if isinstance(p, lark.Tree)]


def collect(text: str, filename: str = "<string>") -> ArchSource:
    text = strip_bom(text)
    tree = parse(text, filename)
    header = tree.children[0]
    name = str(header.children[0])
    src = ArchSource(name=name, text=text, filename=filename, params={}, param_pos={})
    params_tree = header.children[1] if len(header.children) > 1 else None
    for pname, value, node in _params(text, params_tree):
        if pname in src.params:
            raise DSLError(f"parameter `{pname}` is given twice", pos=src.pos(node.meta))
        src.params[pname] = value
        src.param_pos[pname] = src.pos(node.meta)
    defined: dict[str, SourcePos] = {}

    def define(ident: str, meta, what: str) -> SourcePos:
        pos = src.pos(meta)
        if ident in defined or ident in src.params:
            raise DSLError(f"{what} `{ident}` is already defined", pos=pos)
        defined[ident] = pos
        return pos

    policy_seen = False
    for item in tree.children[1:]:
        kind = item.data
        if kind == "variant":
            vname = str(item.children[0])
            if vname in src.variants:
                raise DSLError(f"variant `{vname}` is defined twice", pos=src.pos(item.meta))
            overrides = {}
            for pname, value, node in _params(text, item.children[1]):
                if pname not in src.params and pname not in STANDARD_PARAMS:
                    raise DSLError(f"variant `{vname}` sets `{pname}`, which is not a network parameter"
                                   + suggest(pname, src.params), pos=src.pos(node.meta))
                overrides[pname] = value
            src.variants[vname] = overrides
        elif kind == "policy":
            if policy_seen:
                raise DSLError("the policy is set twice", pos=src.pos(item.meta))
            policy_seen = True
            src.policy = str(item.children[0])
            if src.policy not in POLICIES:
                raise DSLError(f"unknown policy `{src.policy}`; choose one of {', '.join(POLICIES)}",
                               pos=src.pos(item.meta))
        elif kind == "width_decl":
            for w in item.children:
                wname = str(w.children[0])
                roles: list[str] = []
                minimum = None
                for attr in (w.children[2].children if len(w.children) > 2 else ()):
                    key = str(attr.children[0])
                    if len(attr.children) > 1:  # `min = N`
                        if key != "min":
                            raise DSLError(f"unknown width attribute `{key}`; the only one is `min`"
                                           + suggest(key, ["min"]), pos=src.pos(attr.meta))
                        minimum = attr.children[1]
                    elif key not in KNOWN_ROLES:
                        raise DSLError(f"unknown role `{key}`; roles are {', '.join(KNOWN_ROLES)}"
                                       + suggest(key, KNOWN_ROLES), pos=src.pos(attr.meta))
                    else:
                        roles.append(key)
                pos = define(wname, w.meta, "width symbol")
                src.widths.append(WidthDecl(wname, w.children[1], True, tuple(roles), pos, minimum))
        elif kind == "fixed_decl":
            fname = str(item.children[0])
            pos = define(fname, item.children[0], "width symbol")
            src.widths.append(WidthDecl(fname, item.children[1], False, (), pos))
        elif kind == "let_decl":
            lname = str(item.children[0])
            pos = define(lname, item.children[0], "name")
            src.lets.append((lname, item.children[1], pos))
        elif kind == "block_def":
            bname = str(item.children[0])
            pos = define(bname, item.children[0], "block")
            params: list[str] = []
            param_pos: dict[str, SourcePos] = {}
            defaults: dict[str, lark.Tree] = {}
            body = []
            for child in item.children[1:]:
                if isinstance(child, lark.Tree) and child.data == "block_param":
                    pname = str(child.children[0])
                    if pname in params:
                        raise DSLError(f"block `{bname}` has two parameters named `{pname}`",
                                       pos=src.pos(child.meta))
                    params.append(pname)
                    param_pos[pname] = src.pos(child.children[0])
                    if len(child.children) > 1:
                        defaults[pname] = child.children[1]
                elif isinstance(child, lark.Tree):
                    body.append(child)
            src.blocks[bname] = BlockDef(bname, params, defaults, body, pos, param_pos)
        elif kind == "body":
            if src.body is not None:
                raise DSLError("the network has two `body` sections", pos=src.pos(item.meta))
            src.body = list(item.children)
            src.body_pos = src.pos(item.meta)
    if src.body is None:
        raise DSLError("the network has no `body { ... }` section",
                       pos=source_pos(text, filename, 1, 1))
    return src
