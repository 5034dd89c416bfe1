"""DSL constructs added for imported networks, written by hand: concat, ceil pools, bn eps, dilation,
hsigmoid / leaky_relu, residual(always = 1). Counts are checked against the built torch module (params)
and hand-computed MACs; the C++ program against the Python oracle; errors carry positions."""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import pyns
from pyns.cost import oracle

INCEPTION = """
network incept(classes = 10, resolution = 17, in_channels = 3)
width a = 8, b = 12, c = 6, d = 4
body {
    conv(a, 3, stride = 2, dilation = 2)   # 17 -> 9: span 5, default pad 2
    bn(eps = 0.001)
    hsigmoid
    concat {
        branch { conv(b, 1) leaky_relu }
        branch { conv(c, 3) bn }
        branch { maxpool(3, 2, 0, ceil = 1) conv(d, 1, stride = 1) }
    }
    gap
    flatten
    linear(classes)
}
"""


def _flops_macs(model, res, channels=3):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, channels, res, res))
    return counter.get_total_flops() // 2


def test_concat_counts_exactly():
    text = INCEPTION.replace("maxpool(3, 2, 0, ceil = 1)", "maxpool(3, 1, 1, ceil = 1)")
    arch = pyns.loads(text)
    model = arch.build().eval()
    cost = arch.count()
    assert cost.params == sum(p.numel() for p in model.parameters())
    assert cost.macs == _flops_macs(model, 17)
    assert oracle.count(arch.network, arch.defaults) == (cost.params, cost.macs)
    widths = {"a": 5, "b": 3, "c": 9, "d": 2}
    small = arch.build(widths)
    assert arch.count(widths).params == sum(p.numel() for p in small.parameters())
    assert small(torch.zeros(2, 3, 17, 17)).shape == (2, 10)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.eps == 0.001
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.dilation == (2, 2)


def test_concat_size_mismatch_is_positioned():
    with pytest.raises(pyns.DSLError) as err:
        pyns.loads(INCEPTION)
    text = str(err.value)
    assert "concat branches disagree" in text and "<string>:11:" in text


@pytest.mark.parametrize("size", [9, 10, 11, 12, 13])
def test_ceil_pool_size_matches_torch(size):
    text = f"""network p(classes = 2, resolution = {size}, in_channels = 1)
    width a = 2
    body {{ conv(a, 1) maxpool(3, 2, 1, ceil = 1) avgpool(2, 2, 0, ceil = 1) gap flatten linear(classes) }}"""
    arch = pyns.loads(text)
    pools = [n for n in arch.network.layers if getattr(n, "kind", None) in ("max", "avg")]
    x = torch.zeros(1, 2, size, size)
    x = torch.nn.MaxPool2d(3, 2, 1, ceil_mode=True)(x)
    assert pools[0].out_hw == tuple(x.shape[2:])
    x = torch.nn.AvgPool2d(2, 2, 0, ceil_mode=True)(x)
    assert pools[1].out_hw == tuple(x.shape[2:])


def test_residual_always_keeps_the_projection():
    text = """network r(classes = 2, resolution = 8, in_channels = 4)
    width a = 4
    body { residual(shortcut = conv_bn, always = 1) { conv(a, 3) bn } gap flatten linear(classes) }"""
    arch = pyns.loads(text)
    model = arch.build()
    assert arch.count().params == sum(p.numel() for p in model.parameters())
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 2  # body + projection
    bad = text.replace("shortcut = conv_bn, always = 1", "always = 1")
    with pytest.raises(pyns.DSLError, match="needs a projection"):
        pyns.loads(bad)


@pytest.mark.parametrize("snippet,message", [
    ("concat { branch { conv(a, 1) } }", "at least two"),
    ("bn(eps = 0)", "small positive"),
    ("conv(a, 3, dilation = 0)", "dilation must be at least 1"),
    ("flatten concat { branch { } branch { } }", "already flattened"),
])
def test_new_construct_errors(snippet, message):
    text = f"network e(classes = 2, resolution = 8, in_channels = 3)\nwidth a = 4\nbody {{ conv(a, 1) {snippet} }}"
    with pytest.raises(pyns.DSLError, match=message) as err:
        pyns.loads(text)
    assert "<string>:3:" in str(err.value)


def test_explicit_shortcut_block_resnet_d():
    text = """network d(classes = 3, resolution = 9, in_channels = 4)
    width a = 6, b = 8
    body {
        residual {
            conv(a, 3, stride = 2) bn relu conv(b, 3) bn
            shortcut { avgpool(2, 2, 0, ceil = 1, exclude_pad = 1) conv(b, 1) bn }
        }
        gap flatten linear(classes)
    }"""
    arch = pyns.loads(text)
    model = arch.build().eval()
    assert arch.count().params == sum(p.numel() for p in model.parameters())
    assert arch.count().macs == _flops_macs(model, 9, channels=4)
    pool = next(m for m in model.modules() if isinstance(m, torch.nn.AvgPool2d))
    assert pool.ceil_mode and not pool.count_include_pad
    assert arch.count({"a": 2, "b": 8}).params == sum(p.numel() for p in arch.build({"a": 2, "b": 8}).parameters())
    with pytest.raises(pyns.DSLError, match="shortcut gives 6 channels") as err:
        pyns.loads(text.replace("conv(b, 1) bn }", "conv(a, 1) bn }"))
    assert "<string>:6:" in str(err.value)


def test_slice_and_shuffle_match_torch():
    text = """network s(classes = 3, resolution = 6, in_channels = 3)
    width a = 8, b = 4
    body {
        conv(a, 1)
        concat { branch { slice(0, in - in // 2) } branch { slice(in - in // 2, in // 2) conv(b, 3) } }
        shuffle(2)
        gap flatten linear(classes)
    }"""
    arch = pyns.loads(text)
    model = arch.build().eval()
    assert arch.count().params == sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 3, 6, 6)
    from pyns.builder import ChannelShuffle, ConcatBlock
    conv = model.layers[0]
    concat = next(m for m in model.modules() if isinstance(m, ConcatBlock))
    shuffle = next(m for m in model.modules() if isinstance(m, ChannelShuffle))
    inner = next(m for m in concat.branches[1].modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        y = conv(x)
        x1, x2 = y.chunk(2, dim=1)
        cat = torch.cat([x1, inner(x2)], 1)
        n, c, h, w = cat.shape
        shuffled = cat.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        torch.testing.assert_close(shuffle(concat(y)), shuffled)
    with pytest.raises(pyns.DSLError, match="reaches past") as err:
        pyns.loads(text.replace("slice(0, in - in // 2)", "slice(2, in)"))
    assert "<string>:5:" in str(err.value)
    with pytest.raises(pyns.DSLError, match="divisible by 3"):
        pyns.loads(text.replace("shuffle(2)", "shuffle(3)"))


def test_convnext_layers_count_like_torch():
    text = """network cn(classes = 5, resolution = 8, in_channels = 3)
    width a = 8, h = 32
    body {
        conv(a, 4, stride = 4, pad = 0, bias = 1)
        layernorm
        residual {
            dwconv(7, bias = 1) layernorm(eps = 0.00001) channel_linear(h) gelu channel_linear(a) scale
        }
        gap layernorm flatten linear(classes)
    }"""
    arch = pyns.loads(text)
    model = arch.build().eval()
    cost = arch.count()
    assert cost.params == sum(p.numel() for p in model.parameters())
    assert cost.macs == _flops_macs(model, 8)
    assert oracle.count(arch.network, arch.defaults) == (cost.params, cost.macs)
    # The channel LayerNorm equals torch's LayerNorm over a channels-last view.
    from pyns.builder import ChannelLayerNorm
    ln = next(m for m in model.modules() if isinstance(m, ChannelLayerNorm))
    x = torch.randn(2, 8, 2, 2)
    torch.testing.assert_close(ln(x), torch.nn.functional.layer_norm(
        x.permute(0, 2, 3, 1), (8,), ln.weight, ln.bias, ln.eps).permute(0, 3, 1, 2))
    with pytest.raises(pyns.DSLError, match="layernorm\\(eps\\)"):
        pyns.loads(text.replace("layernorm(eps = 0.00001)", "layernorm(eps = 2)"))


def test_lets_inside_concat_branches_are_checked_for_reserved_names():
    text = """network r(classes = 2, resolution = 4, in_channels = 3)
    width a = 4
    body { conv(a, 1) concat { branch { let round = 2 } branch { } } gap flatten linear(classes) }"""
    with pytest.raises(pyns.DSLError, match="reserved name"):
        pyns.loads(text)


def test_importer_never_names_a_width_after_a_reserved_word():
    from pyns.torch_import.emit import sanitize
    for word in ("concat", "branch", "shortcut", "conv", "in", "round", "classes", "3x"):
        name = sanitize(word)
        text = f"network r(classes = 2, resolution = 4, in_channels = 3)\nwidth {name} = 4\n" \
               f"body {{ conv({name}, 1) gap flatten linear(classes) }}"
        assert pyns.loads(text).defaults[name] == 4
