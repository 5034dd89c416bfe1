"""pyns.from_torch on real torchvision / timm models: exact counts, round trip, weights, scaling.

Counts are checked against the module itself: params = sum(p.numel()), MACs = FlopCounterMode / 2.
FlopCounterMode counts convolutions and matrix products (linear layers via addmm/mm) and nothing else,
which is the pyns convention (SPEC §3 / §8), so the two are compared directly. Small inputs keep the
suite fast on a shared 2-core machine; every model below still has all its layers at these sizes.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import pyns
from torch_models import model as make_model

# (spec, input resolution): the smallest square input each family accepts with all its layers.
MODELS = [
    ("torchvision:resnet18", 64), ("torchvision:resnet34", 64), ("torchvision:resnet50", 64),
    ("torchvision:resnet101", 64), ("torchvision:resnext50_32x4d", 64), ("torchvision:wide_resnet50_2", 64),
    ("torchvision:mobilenet_v2", 64), ("torchvision:mobilenet_v3_small", 64),
    ("torchvision:mobilenet_v3_large", 64), ("torchvision:efficientnet_b0", 64),
    ("torchvision:efficientnet_b1", 64), ("torchvision:efficientnet_b2", 64),
    ("torchvision:efficientnet_b3", 64), ("torchvision:mnasnet0_5", 64), ("torchvision:mnasnet1_0", 64),
    ("torchvision:regnet_x_400mf", 64), ("torchvision:regnet_y_400mf", 64), ("torchvision:regnet_y_800mf", 64),
    ("torchvision:vgg11_bn", 32), ("torchvision:vgg13_bn", 32), ("torchvision:vgg16_bn", 32),
    ("torchvision:vgg19_bn", 32), ("torchvision:densenet121", 64), ("torchvision:densenet169", 64),
    ("torchvision:googlenet", 64), ("torchvision:shufflenet_v2_x0_5", 64), ("torchvision:shufflenet_v2_x1_0", 64), ("torchvision:squeezenet1_0", 64), ("torchvision:squeezenet1_1", 64),
    ("timm:resnet18", 64), ("timm:resnet50", 64), ("timm:efficientnet_b0", 64), ("timm:tinynet_a", 64),
    ("timm:tinynet_b", 64), ("timm:tinynet_c", 64), ("timm:tinynet_d", 64), ("timm:tinynet_e", 64),
    ("timm:mobilenetv3_large_100", 64), ("timm:mobilenetv3_small_100", 64), ("timm:regnetx_002", 64),
    ("timm:regnety_004", 64), ("timm:lcnet_050", 64), ("timm:resnet18d", 64), ("timm:resnet50d", 64),
    ("timm:resnet26d", 64), ("torchvision:convnext_tiny", 32), ("timm:convnext_atto", 32),
    ("timm:convnext_nano", 32), ("timm:ghostnet_100", 64), ("timm:cspresnet50", 64),
    ("timm:rexnet_100", 64), ("timm:rexnet_130", 64), ("timm:mixnet_s", 64), ("timm:mixnet_m", 64),
]
HEAVY = {"torchvision:vgg11_bn", "torchvision:vgg13_bn", "torchvision:vgg16_bn", "torchvision:vgg19_bn",
         "torchvision:wide_resnet50_2", "torchvision:resnet101"}  # >40M params: slow to build twice
PARAMS = [pytest.param(s, r, marks=pytest.mark.slow) if s in HEAVY else (s, r) for s, r in MODELS]


def _macs(module, x) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("spec,res", PARAMS)
def test_import_counts_roundtrip_weights_scale(spec, res, one_thread):
    model = make_model(spec)
    x = torch.randn(2, 3, res, res)
    arch = pyns.from_torch(model, (3, res, res))
    cost = arch.count()
    assert cost.params == sum(p.numel() for p in model.parameters())
    assert cost.macs == _macs(model, x[:1])

    text = arch.to_text()
    again = pyns.loads(text)
    assert again.to_text() == text
    assert again.defaults == arch.defaults
    assert (again.count().params, again.count().macs) == (cost.params, cost.macs)

    net = arch.build(weights=model).eval()
    with torch.no_grad():
        expect, got = model(x), net(x)
    assert got.shape == expect.shape
    assert torch.allclose(got, expect, atol=1e-5, rtol=1e-5), (got - expect).abs().max()

    result = arch.scale(params="0.5x")
    small = arch.build(result.widths)
    assert sum(p.numel() for p in small.parameters()) == result.params
    assert result.params <= cost.params // 2


def test_weights_into_arch_read_back_from_text(one_thread):
    model = make_model("torchvision:mobilenet_v3_small")
    text = pyns.from_torch(model, (3, 64, 64)).to_text()
    arch = pyns.loads(text)  # no memory of the module: build() re-imports it to map the layers
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(arch.build(weights=model).eval()(x), model(x), atol=1e-5)


@pytest.mark.parametrize("spec,shipped", [
    ("timm:efficientnet_b0", "efficientnet_b0"), ("torchvision:resnet50", "resnet50"),
    ("torchvision:resnet18", "resnet18_imagenet"), ("torchvision:mobilenet_v2", "mobilenet_v2_imagenet"),
    pytest.param("torchvision:vgg11_bn", "vgg11_bn_imagenet", marks=pytest.mark.slow)])
def test_shipped_archs_count_like_the_imported_models(spec, shipped, one_thread):
    imported = pyns.from_torch(make_model(spec), (3, 224, 224)).count()
    ship = pyns.load(shipped).count()
    assert (imported.params, imported.macs) == (ship.params, ship.macs)


def test_widths_are_named_after_their_producers_and_tied(one_thread):
    arch = pyns.from_torch(make_model("torchvision:resnet50"), (3, 64, 64))
    names = set(arch.searchable)
    # The stem and every identity-added stage-1 output are one group named after the stem conv.
    assert "conv1" in names and "layer1_0_conv1" in names
    assert "layer1_0_conv3" in names  # stage 1 output (projection in layer1.0) ...
    assert "layer1_1_conv3" not in names  # ... tied by the adds of layer1.1/1.2
    assert "repeat(3)" in arch.to_text()  # layer1.0 .. layer1.2: one stage, its first block folded in
    assert len(names) == 13  # stem + 4 stages x (output, the 1x1 and 3x3 widths its blocks share)


def test_without_repeats_every_group_is_its_own_width(one_thread):
    model = make_model("torchvision:resnet50")
    arch = pyns.from_torch(model, (3, 64, 64), repeats=False)
    assert "repeat(" not in arch.to_text()
    # stem + 16 blocks x 2 inner widths + 4 stage outputs = 37, Torch-Pruning's group count on resnet50
    # (benchmarks/bench_import.py); the network counted is the same.
    assert len(arch.searchable) == 1 + 16 * 2 + 4
    assert arch.count().params == sum(p.numel() for p in model.parameters())


def test_grouped_conv_is_searched_per_group(one_thread):
    arch = pyns.from_torch(make_model("torchvision:resnext50_32x4d"), (3, 64, 64))
    assert "conv(32 * layer1_0_conv2, 3, groups = 32)" in arch.to_text()
    assert arch.defaults["layer1_0_conv1"] == 4  # 128 channels = 32 groups x 4
    half = arch.uniform_widths(0.5)
    model = arch.build(half)  # any per-group width keeps the group count valid
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 32]
    assert convs and all(c.in_channels % 32 == 0 for c in convs)


def test_densenet_layers_fold_into_repeats(one_thread):
    arch = pyns.from_torch(make_model("torchvision:densenet121"), (3, 64, 64))
    text = arch.to_text()
    # 6/12/24/16 dense layers, each `x -> cat(x, layer(x))`, one repeat per block with two widths
    # (bottleneck and growth rate), plus the stem and three transitions.
    assert all(f"repeat({n})" in text for n in (6, 12, 24, 16))
    assert len(arch.searchable) == 1 + 4 * 2 + 3
    assert arch.count(depth=0.5).params < arch.count().params


def test_depth_multiplier_acts_on_repeats(one_thread):
    arch = pyns.from_torch(make_model("timm:efficientnet_b0"), (3, 64, 64))
    assert arch.count(depth=2.0).params > arch.count().params


class _FFTNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv(x)
        x = torch.fft.fft2(x).real
        return self.fc(x.mean((2, 3)))


def test_unsupported_op_names_op_module_and_source_line():
    with pytest.raises(pyns.PynsError) as err:
        pyns.from_torch(_FFTNet(), (3, 16, 16))
    text = str(err.value)
    assert "fft2" in text
    assert "x = torch.fft.fft2(x).real" in text and "test_torch_import.py" in text


class _Scaled(torch.nn.Module):
    """A layer-scale parameter outside any layer pyns knows: must be refused, not counted wrong."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.gamma = torch.nn.Parameter(torch.ones(1))
        self.fc = torch.nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_parameter_outside_known_layers_is_an_error():
    with pytest.raises(pyns.PynsError, match="gamma"):
        pyns.from_torch(_Scaled(), (3, 16, 16))


def test_non_square_input_is_an_error():
    with pytest.raises(pyns.PynsError, match="square"):
        pyns.from_torch(_Scaled(), (3, 16, 20))


def test_rexnet_partial_residuals_grow_the_stage_width(one_thread):
    """ReXNet's `cat([x[:, :in] + shortcut, x[:, in:]])` is a partial residual whose last conv writes the
    stage's width so far plus the block's own extra width: scaling one block's extra keeps the rest."""
    arch = pyns.from_torch(make_model("timm:rexnet_100"), (3, 64, 64))
    text = arch.to_text()
    assert text.count("residual(shortcut = partial)") == 11  # every stride-1 block whose width grows
    assert "conv(features_1_conv_pwl_conv + features_2_conv_pwl_conv, 1)" in text
    widths = {**arch.defaults, "features_7_conv_pwl_conv": 3}
    model = arch.build(widths).eval()  # eval: the squeeze-excite BatchNorm sees one value per channel
    assert sum(p.numel() for p in model.parameters()) == arch.count(widths).params
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)


def test_mixnet_splits_are_refined_to_common_boundaries(one_thread):
    """blocks.4.0: an expansion in two parts of 240 read by a depthwise mixed conv in three parts of 160:
    the 480 channels become four widths 160 | 80 | 80 | 160, and each part is a sum of them."""
    arch = pyns.from_torch(make_model("timm:mixnet_s"), (3, 64, 64))
    names = ["blocks_4_0_conv_pw_0_0", "blocks_4_0_conv_pw_0_1", "blocks_4_0_conv_pw_1_0", "blocks_4_0_conv_pw_1_1"]
    assert [arch.defaults[n] for n in names] == [160, 80, 80, 160]
    text = arch.to_text()
    assert f"conv({names[0]} + {names[1]}, 1)" in text and f"slice({names[0]}, {names[1]} + {names[2]})" in text


def test_rexnet_state_dict_loads_through_the_text_layer_map(one_thread):
    """The squeeze-excite's BatchNorm travels in the `# pyns-torch-layers:` map (`se=fc1+fc2+bn`), so an
    Arch read back from text takes the model's state_dict with no module at hand."""
    model = make_model("timm:rexnet_100")
    text = pyns.from_torch(model, (3, 64, 64)).to_text()
    assert "se=features.3.se.fc1+features.3.se.fc2+features.3.se.bn" in text
    net = pyns.loads(text).build(weights=model.state_dict()).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x), model(x), atol=1e-5, rtol=1e-5)


class _OddGhost(torch.nn.Module):
    """GhostNet's `cat([x1, cheap(x1)])[:, :out]` at an odd width: the slice cuts the tied group it ends in."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.primary = torch.nn.Conv2d(8, 6, 1)
        self.cheap = torch.nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.post = torch.nn.Conv2d(11, 7, 1)
        self.fc = torch.nn.Linear(7, 4)

    def forward(self, x):
        a = self.primary(self.stem(x))
        return self.fc(self.post(torch.cat([a, self.cheap(a)], 1)[:, :11]).mean((2, 3)))


def test_channel_slice_inside_a_group_refines_it(one_thread):
    """The 6 primary channels become widths 5 + 1 (the slice keeps both copies of the first 5 and the sixth
    once), so the slice follows any widths; counts, weights and a scaled build stay exact."""
    model = _OddGhost().eval()
    arch = pyns.from_torch(model, (3, 8, 8))
    assert "conv(primary_0 + primary, 1, bias = 1)" in arch.to_text()
    assert arch.count().params == sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(arch.build(weights=model).eval()(x), model(x), atol=1e-6)
    result = arch.scale(params="0.5x")
    assert sum(p.numel() for p in arch.build(result.widths).parameters()) == result.params
