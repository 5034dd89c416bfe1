"""Bytes of an .arch file -> text, with the problems a file can have on disk reported at their position:
too large to read, not UTF-8 (the line and column of the first bad byte). A UTF-8 byte-order mark, which
some Windows editors write, is dropped, so columns count from the first visible character.
"""
from __future__ import annotations

from pathlib import Path

from pyns.dsl.limits import MAX_SOURCE_BYTES, offset_pos
from pyns.errors import DSLError, PynsError

BOM = "\ufeff"


def decode(data: bytes, filename: str) -> str:
    """UTF-8 bytes (an optional BOM first) -> text; anything else is a positioned DSLError."""
    if data.startswith(BOM.encode()):
        data = data[len(BOM.encode()):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        # Decode what is there leniently only to find and show the line: the column counts characters, as
        # every other position does, and the bad byte shows as U+FFFD in the echoed line.
        before = data[:err.start].decode("utf-8", errors="replace")
        text = before + data[err.start:].decode("utf-8", errors="replace")
        raise DSLError(f"the file is not valid UTF-8 text (byte 0x{data[err.start]:02x} here cannot start or "
                       "continue a character); save it as UTF-8", pos=offset_pos(text, len(before), filename)) from None


def strip_bom(text: str) -> str:
    return text[len(BOM):] if text.startswith(BOM) else text


def read(path: Path, display: str) -> str:
    """Read and decode an .arch file, never more than MAX_SOURCE_BYTES (+1, to tell that there was more)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SOURCE_BYTES + 1)
    except OSError as err:
        raise PynsError(f"cannot read {path}: {err.strerror or err}") from None
    if len(data) > MAX_SOURCE_BYTES:
        text = data[:MAX_SOURCE_BYTES].decode("utf-8", errors="replace")
        raise DSLError(f"the file is larger than {MAX_SOURCE_BYTES >> 20} MiB; no architecture needs this much",
                       pos=offset_pos(text, len(text), display))
    return decode(data, display)
