"""ReXNet's and MixNet's constructs written by hand: `residual(shortcut = partial)` (the input added into the
first `in` channels of a wider body output, the rest passing), `se(..., bn = 1)` (a BatchNorm on the squeeze)
and a mixed conv (`conv(a + b, 1)` split by `slice`s into a `concat` of convs, then one BatchNorm).
Counts: the C++ program, the Python oracle, the built module's sum(numel) and FlopCounterMode agree;
shrunk == masked through the partial adds; malformed uses are positioned errors (exit 2 from the CLI)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import pyns
from pyns.builder import PartialResidualBlock
from pyns.channels import channel_map
from pyns.cli.main import main
from pyns.cost import oracle
from shrink_checks import randomise_bn, shrink_and_mask

REX = """
network rex(classes = 10, resolution = 12, in_channels = 3)
width a = 16, e = 8, f = 4, x = 24, r = 6
body {
    conv(a, 3) bn swish
    residual(shortcut = partial) {
        conv(x, 1) bn swish
        dwconv(3) bn
        se(r, act = relu, gate = sigmoid, bn = 1)
        relu6
        conv(a + e, 1) bn
    }
    residual(shortcut = partial) {
        conv(x, 1) bn swish
        dwconv(3) bn relu6
        conv(a + e + f, 1) bn
    }
    gap flatten linear(classes)
}
"""


def _macs(model, res: int) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, res, res))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("widths", [{}, {"a": 5, "e": 1, "f": 7, "x": 9, "r": 2}])
def test_partial_residual_and_se_bn_count_exactly(widths):
    arch = pyns.loads(REX)
    cost = arch.count(widths)  # the C++ cost program
    model = arch.build(widths).eval()
    assert cost.params == sum(p.numel() for p in model.parameters())
    assert cost.macs == _macs(model, 12)
    assert oracle.count(arch.network, {**arch.defaults, **widths}) == (cost.params, cost.macs)
    se_bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d) and m.num_features == cost.widths["r"]]
    assert se_bn  # the squeeze's BatchNorm exists and is counted (2 * r params)


def test_partial_residual_adds_into_the_first_channels():
    arch = pyns.loads(REX)
    model = arch.build().eval()
    block = next(m for m in model.modules() if isinstance(m, PartialResidualBlock))
    x = torch.randn(2, 16, 12, 12)
    with torch.no_grad():
        out, body = block(x), block.body(x)
    assert out.shape == (2, 24, 12, 12)
    torch.testing.assert_close(out[:, :16], body[:, :16] + x)
    torch.testing.assert_close(out[:, 16:], body[:, 16:])


def test_partial_residual_shrinks_exactly():
    arch = pyns.loads(REX)
    cmap = channel_map(arch.network, arch.defaults)
    # the body's last conv writes `a + e (+ f)`: its output is those spaces side by side, and the
    # partial add joins its first part with the input (space a): one class per symbol
    assert sorted(cmap.classes) == [("a",), ("e",), ("f",), ("r",), ("x",)] and not cmap.frozen
    torch.manual_seed(0)
    full = arch.build(gates=True)
    randomise_bn(full, torch.Generator().manual_seed(1))
    keep = {"a": [0, 2, 3, 5, 7, 9, 11], "e": [1, 2, 5], "f": [0, 3], "x": list(range(1, 24, 2)), "r": [1, 4]}
    small, report = shrink_and_mask(arch, full, keep)
    assert report.exact, report
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(x), full.eval()(x), rtol=1e-5, atol=1e-5)


def test_partial_residual_narrower_widths_are_refused_at_the_residual():
    text = REX.replace("conv(a + e + f, 1)", "conv(f, 1)").replace("f = 4", "f = 30")
    arch = pyns.loads(text)
    with pytest.raises(pyns.DSLError, match="partial residual") as err:
        arch.build({"f": 3})  # 3 output channels cannot take the 24-channel input
    assert "<string>:13:" in str(err.value)


BAD = {
    "narrower": (REX.replace("conv(a + e, 1) bn", "conv(8, 1) bn"), 6, "only `8` = 8"),
    "strided": (REX.replace("dwconv(3) bn\n        se", "dwconv(3, stride = 2) bn\n        se"), 6, "stride 2"),
    "bias": (REX.replace("residual(shortcut = partial) {\n        conv(x, 1) bn swish\n        dwconv(3) bn relu6",
                         "residual(shortcut = partial, bias = 1) {\n        conv(x, 1) bn swish\n        dwconv(3) bn relu6"),
             13, "has none"),
    "se-bn-word": (REX.replace("bn = 1)", "bn = 2)"), 9, "yes/no setting"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_partial_residual_is_a_positioned_error(case, tmp_path, capsys):
    text, line, message = BAD[case]
    with pytest.raises(pyns.DSLError, match=message):
        pyns.loads(text)
    path = tmp_path / f"{case}.arch"
    path.write_text(text)
    assert main(["count", str(path)]) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and lines[0].startswith(f"pyns: error: {path}:{line}:"), err
    column = int(lines[0].rsplit(":", 1)[1])
    assert lines[2].strip() == "^" and len(lines[2]) - 5 == column - 1, err
    assert message in err and "Traceback" not in err


MIXED = """
network mix(classes = 10, resolution = 10, in_channels = 3)
width a = 6, b = 4, c = 5, d = 7
body {
    conv(a + b, 3) bn relu
    concat {
        branch { slice(0, a) dwconv(3) }
        branch { slice(a, b) dwconv(5) }
    }
    bn relu
    concat {
        branch { slice(0, a) conv(c, 1) }
        branch { slice(a, b) conv(d, 1) }
    }
    bn
    gap flatten linear(classes)
}
"""


def test_mixed_conv_counts_and_shrinks_exactly():
    """Both halves of the BatchNorm after a concat of convs are gated (as after `conv(a + b)`), so removing
    channels of a, b, c, d is the same function as masking them."""
    arch = pyns.loads(MIXED)
    for widths in ({}, {"a": 3, "b": 9, "c": 2, "d": 1}):
        cost = arch.count(widths)
        model = arch.build(widths).eval()
        assert cost.params == sum(p.numel() for p in model.parameters())
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(torch.zeros(1, 3, 10, 10))
        assert cost.macs == counter.get_total_flops() // 2
        assert oracle.count(arch.network, {**arch.defaults, **widths}) == (cost.params, cost.macs)
    torch.manual_seed(0)
    full = arch.build(gates=True)
    randomise_bn(full, torch.Generator().manual_seed(2))
    keep = {"a": [1, 2, 5], "b": [0, 3], "c": [4], "d": [0, 2, 6]}
    small, report = shrink_and_mask(arch, full, keep)
    assert report.exact, report
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(small.eval()(x), full.eval()(x), rtol=1e-5, atol=1e-5)
