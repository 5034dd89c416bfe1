"""Helpers shared by the .arch front-end tests: a small valid network to edit, and positions of text in it."""
import pytest

from pyns.arch import loads
from pyns.errors import DSLError

NET = """\
network tiny(classes = 10, resolution = 16, in_channels = 3)
width c1 = 8, c2 = 16
body {
    conv(c1, 3)
    bn
    relu
    conv(c2, 3, stride = 2)
    gap
    flatten
    linear(classes)
}
"""
NET_PARAMS = 3 * 3 * 3 * 8 + 2 * 8 + 3 * 3 * 8 * 16 + 16 * 10 + 10  # convs (no bias), bn, linear


def with_decl(decl: str, text: str = NET) -> str:
    """`text` with a declaration inserted just before `body`."""
    return text.replace("body {", f"{decl}\nbody {{", 1)


def with_stmt(stmt: str, text: str = NET) -> str:
    """`text` with statements inserted after the first conv/bn/relu (8 channels, 16x16)."""
    return text.replace("    relu\n", f"    relu\n    {stmt}\n", 1)


def where(text: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """1-based (line, column) of the nth occurrence of `needle` in `text`."""
    at = -1
    for _ in range(nth + 1):
        at = text.index(needle, at + 1)
    return text.count("\n", 0, at) + 1, at - (text.rfind("\n", 0, at) + 1) + 1


def error_of(text: str, filename: str = "net.arch") -> DSLError:
    with pytest.raises(DSLError) as info:
        loads(text, filename=filename)
    return info.value


def assert_at(err: DSLError, text: str, needle: str, nth: int = 0) -> None:
    assert err.pos is not None, f"no position: {err}"
    assert (err.pos.line, err.pos.column) == where(text, needle, nth), str(err)
