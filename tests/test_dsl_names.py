"""Reserved names and booleans: a declaration that would be ignored or would replace a built-in is refused
where it is written, and `true`/`false` are yes/no settings, never widths (issue 14, item 5)."""
import pytest

from dsl_cases import NET, NET_PARAMS, assert_at, error_of, with_decl, with_stmt, where
from pyns.arch import loads
from pyns.dsl.elaborate import LAYER_SPECS


@pytest.mark.parametrize("block, needle", [
    ("block b(in) { conv(in, 3) }", "in)"),
    ("block b(block_in) { conv(block_in, 3) }", "block_in)"),
    ("block b(c, true) { conv(c, 3) }", "true)"),
    ("block b(relu = 1) { conv(relu, 3) }", "relu ="),
])
def test_block_parameter_with_a_reserved_name_is_refused_at_the_parameter(block, needle):
    # Today `b(c1)` with parameter `in` builds an in->in conv and leaves c1 "searchable" but unused.
    text = with_stmt("b(c1)", with_decl(block))
    err = error_of(text)
    assert "reserved name" in err.message and "block parameter" in err.message, err.message
    assert_at(err, text, needle)


@pytest.mark.parametrize("decl, needle, what", [
    ("let in = 5", "in = 5", "`let` name"),
    ("let block_in = 5", "block_in = 5", "`let` name"),
    ("let false = 0", "false = 0", "`let` name"),
    ("let round = 2", "round = 2", "`let` name"),
    ("let first = 2", "first = 2", "`let` name"),
    ("let repeat = 2", "repeat = 2", "`let` name"),
    ("fixed gap = 3", "gap = 3", "width symbol"),
    ("width in = 16", "in = 16", "width symbol"),
    ("width true = 16", "true = 16", "width symbol"),
    ("width max = 16", "max = 16", "width symbol"),
    ("block conv(c) { bn }", "conv(c)", "block name"),
    ("block relu() { bn }", "relu()", "block name"),
    ("block identity() { bn }", "identity()", "block name"),
])
def test_reserved_declarations_are_refused_with_position(decl, needle, what):
    text = with_decl(decl)
    err = error_of(text)
    assert "reserved name" in err.message and what in err.message, err.message
    assert "never used" not in err.message
    assert_at(err, text, needle)


def test_statement_level_let_is_checked_even_in_a_block_never_called():
    text = with_decl("block unused(c) {\n    repeat(2) { let in = 4 }\n    conv(c, 1)\n}")
    err = error_of(text)
    assert "`in` is a reserved name" in err.message
    assert_at(err, text, "in = 4")
    text = with_stmt("residual { let relu6 = 3 }")
    assert_at(error_of(text), text, "relu6 = 3")


def test_header_parameter_with_a_reserved_name_is_refused():
    text = NET.replace("in_channels = 3)", "in_channels = 3, in = 4)")
    err = error_of(text)
    assert "reserved name" in err.message and "network parameter" in err.message
    assert_at(err, text, "in = 4")


def test_reserved_names_follow_the_layer_table(monkeypatch):
    from pyns.dsl.names import reserved_names  # new in this change; imported here so the other tests run on old code

    # A layer kind added to the table (as the importer does) is reserved with no other change.
    assert set(LAYER_SPECS) <= set(reserved_names(LAYER_SPECS))
    text = with_decl("block newlayer(c) { conv(c, 1) }")
    loads(text.replace("body {", "body {\n    newlayer(c1)"))  # an ordinary block name until then
    monkeypatch.setitem(LAYER_SPECS, "newlayer", ((), {}, ()))
    err = error_of(text)
    assert "`newlayer` is a reserved name (a built-in layer)" in err.message


def test_ordinary_names_that_contain_reserved_words_are_fine():
    text = with_stmt("let in2 = 8\n    conv(in2, 1)", with_decl("let relu_width = 8"))
    assert loads(text).count().params == NET_PARAMS + 8 * 8


@pytest.mark.parametrize("stmt", ["conv(true, 3)", "conv(false, 1)", "se(reduced = true)"])
def test_a_boolean_is_not_a_width(stmt):
    # Today conv(true, 3) builds a width-1 conv and then reports c1 as "declared but never used".
    text = with_stmt(stmt)
    err = error_of(text)
    assert "is a boolean, not a width" in err.message, err.message
    assert_at(err, text, stmt)


@pytest.mark.parametrize("stmt, message", [
    ("conv(c1 + true, 1)", "`true` is a boolean, not a number"),
    ("repeat(true) { relu }", "`true` is a boolean, not a number"),
    ("conv(c1, true)", "the kernel size must be a number, not the boolean `true`"),
    ("conv(c1, 3, bias = 2)", "bias is a yes/no setting"),
    ("maxpool(2, pad = false)", "the padding must be a number, not the boolean `false`"),
])
def test_booleans_only_where_a_yes_no_setting_is_taken(stmt, message):
    text = with_stmt(stmt)
    err = error_of(text)
    assert message in err.message, err.message
    assert err.pos.line == where(text, stmt)[0]


def test_flags_still_work_as_bias_through_blocks_lets_and_first():
    conv_bias = 3 * 3 * 8 * 8 + 8
    for extra, stmt in (("", "conv(c1, 3, bias = true)"),
                        ("", "conv(c1, 3, bias = 1)"),
                        ("block bb(c, b = true) { conv(c, 3, bias = b) }", "bb(c1)"),
                        ("block bb(c, b = false) { conv(c, 3, bias = b) }", "bb(c1, true)"),
                        ("let yes = true", "conv(c1, 3, bias = yes)"),
                        ("", "repeat(1) { conv(c1, 3, bias = first(true, false)) }")):
        text = with_stmt(stmt, with_decl(extra) if extra else NET)
        assert loads(text).count().params == NET_PARAMS + conv_bias, (extra, stmt)
