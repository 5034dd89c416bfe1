"""Text -> Lark parse tree, with syntax errors turned into positioned `DSLError`s."""
from __future__ import annotations

from functools import lru_cache

import lark

from pyns.errors import DSLError, SourcePos
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


def source_pos(text: str, filename: str, line: int, column: int) -> SourcePos:
    lines = text.splitlines()
    src = lines[line - 1] if 0 < line <= len(lines) else ""
    return SourcePos(filename, line, column, src)


def parse(text: str, filename: str = "<string>") -> lark.Tree:
    try:
        return _parser().parse(text)
    except lark.UnexpectedCharacters as err:
        pos = source_pos(text, filename, err.line, err.column)
        raise DSLError(f"unexpected character {text[err.pos_in_stream]!r}", pos=pos) from None
    except lark.UnexpectedToken as err:
        pos = source_pos(text, filename, err.line, err.column)
        expected = sorted({_TOKEN_NAMES.get(t, t.lower().strip('"')) for t in err.expected})
        got = "end of file" if err.token.type == "$END" else repr(str(err.token))
        shown = ", ".join(expected[:8]) + (", ..." if len(expected) > 8 else "")
        raise DSLError(f"unexpected {got}; expected {shown}", pos=pos) from None
    except lark.UnexpectedEOF:
        last = text.splitlines() or [""]
        pos = source_pos(text, filename, len(last), len(last[-1]) + 1)
        raise DSLError("unexpected end of file (is a '}' or ')' missing?)", pos=pos) from None
