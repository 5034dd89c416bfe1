"""Every front-end error has a position, and `pyns count FILE` shows it the same way for every kind of bad
file: one message with file:line:col, the source line and a caret, exit status 2, no traceback
(issue 14, item 8, and the CLI side of items 5 and 6)."""
import subprocess
import sys

import pytest

from dsl_cases import NET, NET_PARAMS, assert_at, error_of, with_decl, with_stmt, where
from pyns.arch import load, loads
from pyns.cli.main import main
from pyns.errors import DSLError


def test_invalid_utf8_is_reported_at_the_bad_byte(tmp_path):
    text = NET.replace("conv(c2, 3, stride = 2)", "conv(c2, 3, stride = 2)  # café, naïve")
    # "ï" as one Latin-1 byte (0xef), after a valid UTF-8 "é" on the same line.
    data = text.encode("utf-8").replace("ï".encode("utf-8"), b"\xef")
    path = tmp_path / "latin.arch"
    path.write_bytes(data)
    with pytest.raises(DSLError) as info:
        load(path)
    err = info.value
    line, column = where(text, "ïve")  # columns count characters, so the é before it counts once
    assert (err.pos.file, err.pos.line, err.pos.column) == (str(path), line, column)
    assert "not valid UTF-8" in err.message and "0xef" in err.message
    assert "naÃ" not in str(err) and "\ufffd" in err.pos.source_line


def test_a_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.arch"
    path.write_bytes(b"\xef\xbb\xbf" + NET.encode())
    assert load(path).count().params == NET_PARAMS
    assert loads("\ufeff" + NET).count().params == NET_PARAMS
    bad = NET.replace("resolution = 16", "resolution = 0")
    path.write_bytes(b"\xef\xbb\xbf" + bad.encode())
    with pytest.raises(DSLError) as info:
        load(path)
    assert (info.value.pos.line, info.value.pos.column) == where(bad, "0, in_channels")  # the BOM is not a column


@pytest.mark.parametrize("old, new, needle, message", [
    ("resolution = 16", "resolution = 0", "0, in_channels", "input resolution 0 is out of range"),
    ("resolution = 16", "resolution = -32", "-32", "input resolution -32 is out of range"),
    ("resolution = 16", "resolution = 1000000000000", "1000000000000", "out of range (1..16384)"),
    ("resolution = 16", "resolution = 1e12", "1e12", "out of range (1..16384)"),
    ("resolution = 16", "resolution = 16.5", "16.5", "must be a whole number"),
    ("in_channels = 3", "in_channels = 0", "0)", "in_channels 0 is out of range"),
])
def test_header_values_out_of_range_point_at_the_value(old, new, needle, message):
    text = NET.replace(old, new)
    err = error_of(text)
    assert message in err.message, err.message
    assert_at(err, text, needle)


def test_a_variant_value_out_of_range_points_at_the_variant():
    text = NET.replace("width c1", "variant broken(resolution = 0)\nwidth c1")
    loads(text)  # the default is fine
    with pytest.raises(DSLError) as info:
        loads(text, variant="broken")
    assert_at(info.value, text, "0)")


def test_division_by_literal_zero_is_positioned():
    for expr in ("c2 / 0", "c2 // 0", "round(c2 % 0)"):
        text = NET.replace("conv(c2, 3, stride = 2)", f"conv({expr}, 3, stride = 2)")
        err = error_of(text)
        assert "division by zero" in err.message, err.message
        assert_at(err, text, expr.replace("round(", ""))  # at the division itself


def test_a_chain_of_65_blocks_is_too_deep_not_recursive():
    def chain(n):
        blocks = [f"block b{i}(c) {{ b{i + 1}(c) }}" for i in range(1, n)] + [f"block b{n}(c) {{ conv(c, 1) }}"]
        return with_stmt("b1(c1)", with_decl("\n".join(blocks)))

    assert loads(chain(64)).count().params == NET_PARAMS + 8 * 8
    text = chain(65)
    err = error_of(text)
    assert "nesting deeper than 64" in err.message and "calls itself" not in err.message
    assert_at(err, text, "b65(c)")
    recursive = with_stmt("b1(c1)", with_decl("block b1(c) { b2(c) }\nblock b2(c) { b1(c) }"))
    err = error_of(recursive)
    assert "block `b1` calls itself" in err.message
    assert_at(err, recursive, "b1(c) }")


# case -> (file text, what the message must say)
BAD_FILES = {
    "syntax": (NET.replace("conv(c1, 3)", "conv(c1, 3"), "expected"),
    "undefined": (NET.replace("conv(c2, 3", "conv(c3, 3"), "`c3` is not defined"),
    "reserved-param": (with_stmt("b(c1)", with_decl("block b(in) { conv(in, 3) }")), "reserved name"),
    "reserved-let": (with_decl("let in = 5"), "reserved name"),
    "reserved-block": (with_decl("block conv(c) { bn }"), "reserved name"),
    "boolean-width": (NET.replace("conv(c1, 3)", "conv(true, 3)"), "is a boolean"),
    "reserved-width": (NET.replace("c2 = 16", "c2 = 16, in = 16"), "reserved name"),
    "nested-residuals": (with_stmt("residual { " * 3000 + "relu" + " }" * 3000), "nesting deeper than 64"),
    "nested-repeats": (with_stmt("repeat(1) { " * 500 + "relu" + " }" * 500), "nesting deeper than 64"),
    "long-expression": (NET.replace("conv(c1, 3)", "conv(c1" + " + 1" * 500 + ", 3)"), "nested deeper than 100"),
    "huge-expression": (NET.replace("conv(c1, 3)", "conv(c1" + " + 1" * 2_500_000 + ", 3)"), "larger than 4 MiB"),
    "many-lines": (NET.replace("    relu\n", "    relu\n" * 100_000), "more than 20000 tokens"),
    "many-layers": (with_stmt("repeat(1000) { repeat(1000) { relu } }"), "more than 20000 layers"),
    "resolution-0": (NET.replace("resolution = 16", "resolution = 0"), "resolution 0 is out of range"),
    "resolution-negative": (NET.replace("resolution = 16", "resolution = -32"), "resolution -32 is out of range"),
    "resolution-huge": (NET.replace("resolution = 16", "resolution = 1000000000000"), "out of range"),
    "in-channels-0": (NET.replace("in_channels = 3", "in_channels = 0"), "in_channels 0 is out of range"),
    "division-by-zero": (NET.replace("conv(c2, 3", "conv(c2 / 0, 3"), "division by zero"),
    "chain-65": (with_stmt("b1(c1)", with_decl("\n".join(
        [f"block b{i}(c) {{ b{i + 1}(c) }}" for i in range(1, 65)] + ["block b65(c) { conv(c, 1) }"]))),
        "nesting deeper than 64"),
    "invalid-utf8": (NET.replace("bn", "bn # caf\xe9", 1).encode("latin-1"), "not valid UTF-8"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_cli_count_shows_one_positioned_message(case, tmp_path, capsys):
    path = tmp_path / f"{case}.arch"
    text, message = BAD_FILES[case]
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code = main(["count", str(path)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert lines[0].startswith(f"pyns: error: {path}:"), err[:300]
    line, column = (int(x) for x in lines[0].rsplit(":", 2)[1:])
    caret = lines[2]
    assert caret.strip() == "^" and len(caret) - 5 == column - 1 or "..." in lines[1], err[:600]
    assert lines[3].startswith("error: ") and err.count("error:") == 2  # "pyns: error:" and "error:"
    assert message in lines[3], err[:600]
    assert "Traceback" not in err and len(err) < 1500, err[:600]


def test_cli_in_a_real_process_exits_2_without_traceback(tmp_path):
    path = tmp_path / "deep.arch"
    path.write_text(BAD_FILES["nested-residuals"][0])
    run = subprocess.run([sys.executable, "-m", "pyns", "count", str(path)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith(f"pyns: error: {path}:7:") and "nesting deeper than 64" in run.stderr
    assert "Traceback" not in run.stderr
