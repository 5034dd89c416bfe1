"""One exception root for everything pyns reports to a person.

The CLI catches `PynsError`, prints `str(err)` and exits with status 2; anything else is a bug.
Subclasses carry where the problem is (file, line, column, source line) so messages can point at it,
in the manner of lark's `UnexpectedInput.get_context`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourcePos:
    """A position in an .arch source: 1-based line and column."""

    file: str
    line: int
    column: int
    source_line: str = ""

    def context(self) -> str:
        """`file:line:col`, the source line, and a caret under the column."""
        head = f"{self.file}:{self.line}:{self.column}"
        if not self.source_line:
            return head
        shown, at = _excerpt(self.source_line.rstrip(), max(self.column, 1) - 1)
        # Tabs stay tabs under the caret, so it lines up however the terminal expands them.
        caret = "".join("\t" if ch == "\t" else " " for ch in shown[:at]) + "^"
        return f"{head}\n    {shown}\n    {caret}"


# A source line is echoed whole up to this many characters (a wide editor line); longer ones (a generated
# file, a megabyte expression) are cut to a window around the caret so one error cannot flood a terminal.
SHOWN_LINE_CHARS = 200
_ELLIPSIS = "..."


def _excerpt(line: str, at: int) -> tuple[str, int]:
    """`line` cut to about SHOWN_LINE_CHARS around index `at`, and the caret's index in the cut text."""
    if len(line) <= SHOWN_LINE_CHARS:
        return line, at
    at = min(at, len(line))
    half = SHOWN_LINE_CHARS // 2
    start = max(0, min(at - half, len(line) - SHOWN_LINE_CHARS))
    end = min(len(line), start + SHOWN_LINE_CHARS)
    shown = line[start:end]
    if start > 0:
        shown, at = _ELLIPSIS + shown, at - start + len(_ELLIPSIS)
    if end < len(line):
        shown += _ELLIPSIS
    return shown, at


def shorten(text: str, limit: int = 80) -> str:
    """`text` for a message: whole when short, else its head and tail around an ellipsis."""
    if len(text) <= limit:
        return text
    keep = (limit - len(_ELLIPSIS)) // 2
    return text[:keep] + _ELLIPSIS + text[-keep:]


class PynsError(Exception):
    """Root of every error pyns raises on purpose."""

    def __init__(self, message: str, *, pos: SourcePos | None = None, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.hint = hint

    def __str__(self) -> str:
        text = self.message
        if self.pos is not None:
            text = f"{self.pos.context()}\nerror: {self.message}" if self.pos.source_line else (
                f"{self.pos.file}:{self.pos.line}:{self.pos.column}: error: {self.message}")
        if self.hint:
            text += f"\nhint: {self.hint}"
        return text


class DSLError(PynsError):
    """A syntax or semantic error in an .arch source."""


class BudgetError(PynsError):
    """A budget that cannot be met, or a malformed budget/profile."""


class ProfileError(BudgetError):
    """A scaling profile that is missing, malformed or inconsistent with its architecture."""


class DataError(PynsError):
    """A data set folder that is missing or not in the expected layout."""


class RunError(PynsError):
    """A run folder that cannot be used (wrong contents, config mismatch on resume, ...)."""


class ExportError(PynsError):
    """A model bundle, weights file or export that cannot be read, or written faithfully."""


class OutputError(RunError):
    """An output path that cannot be written (a file in the way, a read-only mount, a device, ...)."""
