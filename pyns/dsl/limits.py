"""How big an .arch source may be, and the checks that hold it to that before it can hang or overflow.

Every limit is far beyond any real network and is checked where the work happens, so an absurd input costs
well under a second and ends in a positioned `DSLError`, never a `RecursionError`, a hang or a memory blow-up:

- `check_text`, before parsing: size of the text, count of tokens (the parser's cost), length of names;
- `check_tree`, right after parsing, without recursion: nesting of bodies, depth and size of expressions;
- `Budget`, during elaboration: layers created and total work (statements, repeat passes, expression nodes),
  so a repeat of a repeat stops when the limit is crossed rather than after it has been unrolled.
"""
from __future__ import annotations

import re

import lark

from pyns.errors import DSLError, SourcePos

# Bytes read from a file at most. Far past the token limit's worth of text (20,000 tokens are ~0.2 MB even
# with long comments), so it only stops a multi-gigabyte file from being read into memory whole.
MAX_SOURCE_BYTES = 4 << 20
# Tokens (names, numbers, symbols; comments excluded). The largest shipped file has ~320 and a fully
# unrolled ResNet-152 ~5,000. Lark's LALR parser manages 15,000-60,000 tokens a second (loaded machine vs
# idle), and parsing comes before any other check, so this bounds the time any input can take to refuse.
MAX_TOKENS = 20_000
MAX_NAME_CHARS = 100      # an identifier; real ones are under 30
# Bodies inside one another: block calls, `repeat` and `residual` together. Real networks use 3 or 4
# (body > repeat > block > residual); elaboration recurses a few Python frames per level.
MAX_NESTING = 64
# Operators inside one another in one expression (a chain `a + b + c` counts one level per `+`), and the
# nodes of one expression. Real widths are like `make_divisible(6 * in, 8)`: depth 3, 5 nodes. Evaluation is
# recursive, so depth x frames per level must stay well under Python's limit of 1,000 frames.
MAX_EXPR_DEPTH = 100
MAX_EXPR_NODES = 1_000
MAX_LAYERS = 20_000       # ~100x ResNet-152's layer count
# Elaboration work: one unit per statement run, per repeat pass and per expression node evaluated. A layer
# such as `conv(c1, 3, stride = 2)` costs 4 units, so MAX_LAYERS of them fit twice over; a unit takes a few
# microseconds, so hitting the limit takes well under a second.
MAX_WORK = 10 * MAX_LAYERS
MAX_REPEAT = 1000         # deepest real CNNs repeat a block ~50 times per stage
MAX_WIDTH = 1 << 20       # a million channels: far past any real layer
MAX_RESOLUTION = 16_384   # beyond gigapixel inputs
MAX_NUMBER = 2 ** 62      # beyond int64 the C++ cost engine cannot represent a value

_TOKEN = re.compile(r"#[^\n]*|[A-Za-z_][A-Za-z0-9_]*|[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?|//|\S")

EXPRESSION_KINDS = frozenset({"number", "var", "neg", "add", "sub", "mul", "truediv", "floordiv", "mod", "func"})
_NESTING_KINDS = frozenset({"repeat", "residual"})


def offset_pos(text: str, offset: int, filename: str) -> SourcePos:
    """The position of character `offset` of `text` (lines split on '\\n' only, as the parser counts them)."""
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    line = text[line_start:] if line_end < 0 else text[line_start:line_end]
    return SourcePos(filename, text.count("\n", 0, offset) + 1, offset - line_start + 1, line)


def nesting_message() -> str:
    return (f"nesting deeper than {MAX_NESTING} (block calls, repeats and residuals inside one another); "
            "flatten the structure")


def check_text(text: str, filename: str) -> None:
    """Refuse, before parsing, a text too large for the parser to get through quickly."""
    if len(text) > MAX_SOURCE_BYTES:
        raise DSLError(f"the source is larger than {MAX_SOURCE_BYTES >> 20} MiB; no architecture needs this much",
                       pos=offset_pos(text, MAX_SOURCE_BYTES, filename))
    count = 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token[0] == "#":
            continue
        count += 1
        if count > MAX_TOKENS:
            raise DSLError(f"the source has more than {MAX_TOKENS} tokens; use blocks and repeat(...) instead of "
                           "writing every layer out", pos=offset_pos(text, match.start(), filename))
        if len(token) > MAX_NAME_CHARS and (token[0].isalpha() or token[0] == "_"):
            raise DSLError(f"a name of {len(token)} characters (at most {MAX_NAME_CHARS})",
                           pos=offset_pos(text, match.start(), filename))


def check_tree(tree: lark.Tree, pos) -> None:
    """Refuse deep nesting and oversized expressions anywhere in the parse tree, including blocks never
    called. Iterative, so the check itself cannot overflow; `pos(meta)` makes a SourcePos."""
    # (node, body nesting, expression depth, index of the enclosing expression's root in `roots`)
    stack: list[tuple[lark.Tree, int, int, int]] = [(tree, 0, 0, -1)]
    roots: list[list] = []  # [root node, node count]
    while stack:
        node, nesting, depth, root = stack.pop()
        if node.data in EXPRESSION_KINDS:
            if root < 0:
                roots.append([node, 0])
                root, depth = len(roots) - 1, 0
            depth += 1
            roots[root][1] += 1
            if depth > MAX_EXPR_DEPTH:
                raise DSLError(f"expression nested deeper than {MAX_EXPR_DEPTH} operations (a chain "
                               "`a + b + c + ...` nests one level per operator)", pos=pos(roots[root][0].meta))
            if roots[root][1] > MAX_EXPR_NODES:
                raise DSLError(f"expression of more than {MAX_EXPR_NODES} terms and operations",
                               pos=pos(roots[root][0].meta))
        else:
            root, depth = -1, 0
            if node.data in _NESTING_KINDS:
                nesting += 1
                if nesting > MAX_NESTING:
                    raise DSLError(nesting_message(), pos=pos(node.meta))
        for child in node.children:
            if isinstance(child, lark.Tree):
                stack.append((child, nesting, depth, root))


class Budget:
    """Layers and work spent by one elaboration; raises at the statement that crosses a limit."""

    def __init__(self, error):
        self.error = error  # (message, meta) -> DSLError
        self.layers = 0
        self.work = 0

    def layer(self, meta, count: int = 1) -> None:
        self.layers += count
        if self.layers > MAX_LAYERS:
            raise self.error(f"the network has more than {MAX_LAYERS} layers; is a repeat count too large?", meta)

    def spend(self, meta, units: int = 1) -> None:
        self.work += units
        if self.work > MAX_WORK:
            raise self.error(f"elaborating this network takes more than {MAX_WORK} steps (statements, repeat "
                             "passes and expression terms); is a repeat count too large?", meta)
