"""Text -> Lark parse tree, with syntax errors turned into positioned `DSLError`s."""
from __future__ import annotations

import re
from functools import lru_cache

import lark

from pyns.dsl.limits import check_text, check_tree
from pyns.errors import DSLError, SourcePos, shorten
from pyns.resources import grammar_path

# Friendly names for terminals in "expected ..." messages.
_TOKEN_NAMES = {
    "LPAR": "'('", "RPAR": "')'", "LBRACE": "'{'", "RBRACE": "'}'", "LSQB": "'['", "RSQB": "']'",
    "COMMA": "','", "EQUAL": "'='", "NAME": "a name", "NUMBER": "a number", "PLUS": "'+'",
    "MINUS": "'-'", "STAR": "'*'", "SLASH": "'/'", "SEMICOLON": "';'", "$END": "end of file",
}


@lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    return lark.Lark(grammar_path().read_text(), parser="lalr", propagate_positions=True,
                     maybe_placeholders=False)


def keywords() -> frozenset[str]:
    """The grammar's keywords (`network`, `repeat`, ...): literal terminals that look like names."""
    name = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
    return frozenset(t.pattern.value for t in _parser().terminals
                     if t.pattern.type == "str" and name.match(t.pattern.value))


def line_of(text: str, line: int) -> str:
    """Source line `line` (1-based), splitting on '\n' only, as the parser counts lines."""
    start = 0
    for _ in range(line - 1):
        start = text.find("\n", start) + 1
        if start == 0:
            return ""
    end = text.find("\n", start)
    return text[start:] if end < 0 else text[start:end]


def source_pos(text: str, filename: str, line: int, column: int) -> SourcePos:
    return SourcePos(filename, line, column, line_of(text, line) if line > 0 else "")


def parse(text: str, filename: str = "<string>") -> lark.Tree:
    """Parse `text`, refusing (with a position) anything past the front end's size limits."""
    check_text(text, filename)
    tree = _parse(text, filename)
    check_tree(tree, lambda meta: source_pos(text, filename, getattr(meta, "line", 1), getattr(meta, "column", 1)))
    return tree


def _parse(text: str, filename: str) -> lark.Tree:
    try:
        return _parser().parse(text)
    except lark.UnexpectedCharacters as err:
        pos = source_pos(text, filename, err.line, err.column)
        raise DSLError(f"unexpected character {text[err.pos_in_stream]!r}", pos=pos) from None
    except lark.UnexpectedToken as err:
        pos = source_pos(text, filename, err.line, err.column)
        expected = sorted({_TOKEN_NAMES.get(t, t.lower().strip('"')) for t in err.expected})
        got = "end of file" if err.token.type == "$END" else repr(shorten(str(err.token), 40))
        shown = ", ".join(expected[:8]) + (", ..." if len(expected) > 8 else "")
        raise DSLError(f"unexpected {got}; expected {shown}", pos=pos) from None
    except lark.UnexpectedEOF:
        last = text.split("\n")
        pos = source_pos(text, filename, len(last), len(last[-1]) + 1)
        raise DSLError("unexpected end of file (is a '}' or ')' missing?)", pos=pos) from None
