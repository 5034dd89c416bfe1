"""The .arch front end: syntax, semantics, positioned messages, overrides, and fuzzing."""
import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyns.arch import load, loads
from pyns.errors import DSLError, PynsError
from pyns.resources import archs_dir, shipped_archs

GOOD = """\
network tiny(classes = 10, resolution = 16, in_channels = 3)
width c1 = 8, c2 = 16
body {
    conv(c1, 3)
    bn
    relu
    conv(c2, 3, stride = 2)
    bn
    relu
    gap
    flatten
    linear(classes)
}
"""


def error_of(text: str) -> DSLError:
    with pytest.raises(DSLError) as info:
        loads(text, filename="net.arch")
    return info.value


def test_good_source_counts_by_hand():
    arch = loads(GOOD)
    cost = arch.count()
    conv1 = 3 * 3 * 3 * 8
    conv2 = 3 * 3 * 8 * 16
    bns = 2 * 8 + 2 * 16
    linear = 16 * 10 + 10
    assert cost.params == conv1 + conv2 + bns + linear
    assert cost.macs == conv1 * 16 * 16 + conv2 * 8 * 8 + 16 * 10


def test_undefined_symbol_suggests_the_closest_name_with_position_and_caret():
    err = error_of(GOOD.replace("conv(c2, 3, stride = 2)", "conv(c3, 3, stride = 2)"))
    text = str(err)
    assert "`c3` is not defined; did you mean `c1`" in text or "did you mean `c2`" in text
    assert text.startswith("net.arch:7:10")
    lines = text.splitlines()
    assert lines[1].strip() == "conv(c3, 3, stride = 2)"
    assert lines[2].index("^") == lines[1].index("c3")


def test_syntax_error_reports_line_column_and_expected_tokens():
    err = error_of(GOOD.replace("conv(c1, 3)", "conv(c1, 3"))
    assert err.pos.line == 5 and "expected" in err.message


def test_unused_symbol_is_an_error():
    err = error_of(GOOD.replace("width c1 = 8, c2 = 16", "width c1 = 8, c2 = 16, c9 = 4"))
    assert "`c9` is declared but never used" in err.message and err.pos.line == 2


def test_identity_add_width_mismatch():
    src = GOOD.replace("    gap", "    residual { conv(c1, 1) }\n    gap")
    err = error_of(src)
    assert "width mismatch at identity add" in err.message


def test_identity_add_inside_a_concat_branch_is_checked_at_other_widths():
    """Widths that make an identity add inside a concat branch unequal cannot be built: count() refuses
    them at the residual, as it does for an add outside a concat."""
    arch = loads("""
network t(classes = 5, resolution = 8, in_channels = 3)
width a = 8, b = 8
body {
    conv(a, 3) bn relu
    concat {
        branch { residual { conv(b, 3) bn } }
        branch { }
    }
    gap flatten linear(classes)
}
""")
    with pytest.raises(DSLError, match="identity add joins `a` = 8 and `b` = 6") as err:
        arch.count({"b": 6})
    assert err.value.pos.line == 7


def test_spatial_size_reaching_zero():
    err = error_of(GOOD.replace("    gap", "    maxpool(2)\n    maxpool(2)\n    maxpool(2)\n    maxpool(2)\n    gap"))
    assert "spatial size reaches zero" in err.message


@pytest.mark.parametrize("bad,message", [
    ("repeat(1000000000000) { relu }", "absurd"),
    ("conv(0, 3)", "at least 1"),
    ("conv(c1 * 0.5, 3)", "may not be a whole number"),
    ("conv(c1 * 100000000, 3)", "absurd"),
    ("conv(c1, 0)", "kernel size must be at least 1"),
    ("conv(c1, c2)", "kernel size must be a number known before widths"),
    ("conv(c1, 3, strid = 2)", "did you mean `stride`"),
    ("convv(c1)", "did you mean `conv`"),
    ("se(act = swishh)", "unknown activation"),
    ("residual(shortcut = projection) { relu }", "unknown shortcut"),
    ("conv(c1 // 0, 3)", "division by zero"),
    ("conv(c1, 3, groups = 3)", "groups"),
    ("relu(1)", "at most 0 arguments"),
    ("first(1, 2)", "unknown layer"),
])
def test_semantic_errors(bad, message):
    err = error_of(GOOD.replace("    bn\n    relu\n    conv(c2", f"    {bad}\n    bn\n    relu\n    conv(c2", 1))
    assert message in err.message, err.message
    assert err.pos is not None and err.pos.line >= 1


def test_recursion_is_rejected():
    src = GOOD.replace("body {", "block loop(c) { loop(c) }\nbody {\n    loop(c1)")
    assert "calls itself" in error_of(src).message


def test_parameters_variants_and_overrides():
    arch = load("resnet18:tinyimagenet")
    assert arch.resolution == 64 and arch.network.params["classes"] == 200
    assert load("resnet18", variant="tinyimagenet").count().params == arch.count().params
    overridden = load("vgg11", classes=100)
    assert overridden.count().params - load("vgg11").count().params == 90 * 512 + 90
    with pytest.raises(PynsError, match="no parameter `clases`; did you mean `classes`"):
        load("vgg11", clases=100)
    with pytest.raises(PynsError, match="no variant"):
        load("vgg11:imagenet")


def test_depth_policies_ceil_and_round():
    src = """network d(resolution = 8, in_channels = 1)
policy {policy}
width c = 4
body {{ repeat(3) {{ conv(c, 3) }} gap flatten linear(2) }}
"""
    conv = 3 * 3 * 4
    ceil_arch = loads(src.format(policy="efficientnet"))
    round_arch = loads(src.format(policy="tinynet"))
    # 3 * 0.5 = 1.5: ceil -> 2 repeats, round-half-even -> 2; 3 * 0.4 = 1.2: ceil -> 2, round -> 1
    assert ceil_arch.count(depth=0.4).params - round_arch.count(depth=0.4).params == conv * 4
    assert len(round_arch.ir(depth=0.4).layers) == 1 + 3  # one conv, then gap, flatten, linear
    assert round_arch.ir(depth=2.0).layers[5].name == "conv6"


def test_widths_api_rejects_unknown_and_nonpositive():
    arch = load("vgg11")
    with pytest.raises(PynsError, match="no width symbol `c0`; did you mean"):
        arch.count({"c0": 3})
    with pytest.raises(PynsError, match=">= 1"):
        arch.count({"c1": 0})


def _mutations(text: str, rng: random.Random, n: int) -> str:
    alphabet = list("(){}[]=,.;#*/+-_ \n0123456789") + ["conv", "repeat", "residual", "width", "in", "1e9",
                                                         "block", "let", "first(", "99999999"]
    chars = list(text)
    for _ in range(n):
        action = rng.random()
        pos = rng.randrange(len(chars) + 1)
        if action < 0.4 and chars:
            del chars[min(pos, len(chars) - 1)]
        elif action < 0.8:
            chars.insert(pos, rng.choice(alphabet))
        else:
            a, b = sorted(rng.randrange(len(chars) + 1) for _ in range(2))
            chars[pos:pos] = chars[a:b]  # duplicate a span
    return "".join(chars)


SOURCES = [(archs_dir() / f"{name}.arch").read_text() for name in shipped_archs()]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, len(SOURCES) - 1), n=st.integers(1, 12))
def test_fuzz_mutated_shipped_files_never_crash_or_hang(seed, which, n):
    text = _mutations(SOURCES[which], random.Random(seed), n)
    start = time.perf_counter()
    try:
        arch = loads(text, filename="fuzz.arch")
        arch.count()
    except PynsError as err:
        assert str(err)  # a message, never an empty one
    assert time.perf_counter() - start < 2.0


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_arbitrary_text(text):
    try:
        loads(text)
    except PynsError:
        pass


def test_declared_minimum_bounds_solvers_and_explicit_widths():
    src = GOOD.replace("width c1 = 8, c2 = 16", "width c1 = 8 [min = 6], c2 = 16")
    arch = loads(src)
    assert [s.minimum for s in arch.symbols] == [6, 1]
    result = arch.scale(params=arch.count({"c1": 6, "c2": 1}).params)  # the smallest allowed network
    assert result.widths == {"c1": 6, "c2": 1}
    small = arch.scale(params=400)
    assert small.widths["c1"] >= 6 and small.params <= 400
    assert arch.uniform_widths(0.1)["c1"] == 6
    with pytest.raises(PynsError, match="must be a whole number >= 6 \\(its declared minimum\\)"):
        arch.count({"c1": 5})
    with pytest.raises(PynsError, match="no network meets"):
        arch.scale(params=arch.count({"c1": 6, "c2": 1}).params - 1)
    err = error_of(GOOD.replace("width c1 = 8, c2 = 16", "width c1 = 8 [min = 9], c2 = 16"))
    assert "minimum 9 above its default 8" in err.message
    err = error_of(GOOD.replace("width c1 = 8, c2 = 16", "width c1 = 8 [max = 9], c2 = 16"))
    assert "unknown width attribute `max`" in err.message
