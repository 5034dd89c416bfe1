"""Imported networks repeat whole stages, as the shipped archs do (issue 9: depth multipliers).

A stage's first block (stride, projection or no residual, widths that follow its input) is folded into
the `repeat(n)` of the identical blocks after it, so `round(n * d)` / `ceil(n * d)` acts on all n blocks.
Checked against the shipped .arch files at the same multipliers and policy, against timm's released
TinyNets and against torchvision's own constructors at scaled depths (sum(numel), FlopCounterMode / 2).
"""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import pyns
from conftest import FIXTURES
from pyns.builder import ResidualBlock
from pyns.policies import scale_resolution
from pyns.tinynet.cost import CostPath, stage_repeats
from torch_models import model as make_model
from torch_models import timm as import_timm
from torch_models import torchvision as import_torchvision

REFERENCE = {m["name"]: m for m in json.loads((FIXTURES / "reference_models.json").read_text())["models"]}
# TinyNet (r, d, w), the multipliers tests/test_cost_exact.py gives the shipped efficientnet_b0.arch.
TINYNETS = {"a": (0.86, 1.2, 1.0), "b": (0.84, 1.1, 0.75), "c": (0.825, 0.85, 0.54),
            "d": (0.68, 0.695, 0.54), "e": (0.475, 0.60, 0.51)}
DEPTHS = (0.5, 0.75, 1.0, 1.6, 2.0)  # ceil(n * d) below, at, between and above the default depths


def numel(module) -> int:
    return sum(p.numel() for p in module.parameters())


def macs(module, res: int) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module.eval()(torch.randn(1, 3, res, res))
    return counter.get_total_flops() // 2


def repeats(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"^    repeat\((\d+)\)", text, re.M)]


@pytest.fixture(scope="module")
def effnet():
    return pyns.from_torch(make_model("timm:efficientnet_b0"), (3, 224, 224), policy="tinynet")


# ---- (a) EfficientNet-B0 -> the TinyNet family ------------------------------------------------------------


@pytest.mark.parametrize("letter", sorted(TINYNETS))
def test_imported_efficientnet_b0_scales_to_the_released_tinynets(effnet, letter, one_thread):
    r, d, w = TINYNETS[letter]
    shipped = pyns.load("efficientnet_b0", policy="tinynet")
    res = scale_resolution(224, r)
    mine = effnet.count(effnet.uniform_widths(w), depth=d, resolution=res)
    theirs = shipped.count(shipped.uniform_widths(w), depth=d, resolution=res)
    assert (mine.params, mine.macs) == (theirs.params, theirs.macs)
    expected = REFERENCE[f"tinynet_{letter}"]
    assert (mine.params, mine.macs) == (expected["params"], expected["macs"])
    # the path `pyns tiny` counts (r, d, w) points by, and the stages it sees
    assert CostPath(effnet).count(r, d, w)[:2] == (expected["params"], expected["macs"])
    assert [(s.base, s.repeats) for s in stage_repeats(effnet, d)] == \
        [(s.base, s.repeats) for s in stage_repeats(shipped, d)]
    tiny = import_timm().create_model(f"tinynet_{letter}", pretrained=False)
    assert mine.params == numel(tiny)
    with torch.device("meta"):  # the built network has timm's tensors, one by one
        built = effnet.build(effnet.uniform_widths(w), depth=d, resolution=res)
    assert [tuple(p.shape) for p in built.parameters()] == [tuple(p.shape) for p in tiny.parameters()]


def test_efficientnet_stages_are_written_whole(effnet):
    text = effnet.to_text()
    assert repeats(text) == [1, 2, 2, 3, 3, 4, 1]  # the shipped efficientnet_b0.arch's stages
    assert "conv(make_divisible(6 * in), 1)" in text  # expansion follows the block input
    assert "dwconv(3, stride = first(2, 1))" in text
    assert "residual(shortcut = none)" in text and "blocks_1_1" not in text
    again = pyns.loads(text)
    assert again.to_text() == text and again.defaults == effnet.defaults
    w = effnet.uniform_widths(0.6)
    assert again.count(w, depth=1.4).params == effnet.count(w, depth=1.4).params


# ---- (b) ResNet / MobileNetV2: the shipped stage depths ---------------------------------------------------


def _torchvision_resnet(kind: str, depth: float):
    models = import_torchvision().models
    block, layers = {"resnet18": (models.resnet.BasicBlock, [2, 2, 2, 2]),
                     "resnet50": (models.resnet.Bottleneck, [3, 4, 6, 3])}[kind]
    torch.manual_seed(0)
    return models.resnet.ResNet(block, [math.ceil(n * depth) for n in layers])


def _torchvision_mobilenet_v2(depth: float):
    models = import_torchvision().models
    # torchvision's own setting (t, c, n, s); the t = 1 block is no stage (as in the shipped arch)
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
               [6, 320, 1, 1]]
    setting = [row[:2] + [row[2] if row[0] == 1 else math.ceil(row[2] * depth)] + row[3:] for row in setting]
    torch.manual_seed(0)
    return models.MobileNetV2(inverted_residual_setting=setting)


@pytest.mark.parametrize("spec,shipped,stages", [
    ("torchvision:resnet50", "resnet50", [3, 4, 6, 3]),
    ("torchvision:resnet18", "resnet18_imagenet", [2, 2, 2, 2]),
    ("torchvision:mobilenet_v2", "mobilenet_v2_imagenet", [2, 3, 4, 3, 3, 1]),
])
def test_imported_stages_have_the_shipped_depths(spec, shipped, stages, one_thread):
    model = make_model(spec)
    arch = pyns.from_torch(model, (3, 224, 224), policy="efficientnet")
    ship = pyns.load(shipped)
    assert repeats(arch.to_text()) == stages
    name = spec.split(":")[1]
    for d in DEPTHS:
        cost = arch.count(depth=d, resolution=64)
        reference = _torchvision_mobilenet_v2(d) if name == "mobilenet_v2" else _torchvision_resnet(name, d)
        assert (cost.params, cost.macs) == (numel(reference), macs(reference, 64)), d
        if repeats(ship.to_text()):
            # the shipped arch repeats the same stages: the same network at every depth
            theirs = ship.count(depth=d, resolution=64)
            assert (cost.params, cost.macs) == (theirs.params, theirs.macs), d
        with torch.device("meta"):
            blocks = sum(isinstance(m, ResidualBlock) for m in arch.build(depth=d).modules())
        assert blocks == sum(math.ceil(n * d) for n in stages), d


def test_regnet_y_stages_fold_with_the_squeeze_width_of_the_block_input(one_thread):
    """RegNet-Y's squeeze width is a quarter of the *block* input (not of the layer before it): the stage
    names its input (`let block_input = in`) and every stage is one repeat, scaled as torchvision's own
    RegNet built with those depths."""
    regnet = import_torchvision().models.regnet
    arch = pyns.from_torch(make_model("torchvision:regnet_y_400mf"), (3, 64, 64), policy="efficientnet")
    text = arch.to_text()
    assert repeats(text) == [1, 3, 6, 6] and "se(max(1, block_input // 4)" in text
    params = regnet.BlockParams.from_init_params(depth=16, w_0=48, w_a=27.89, w_m=2.09, group_width=8,
                                                 se_ratio=0.25)
    for d in (0.5, 1.0, 1.6):
        torch.manual_seed(0)
        reference = regnet.RegNet(regnet.BlockParams(
            [math.ceil(n * d) for n in params.depths], params.widths, params.group_widths,
            params.bottleneck_multipliers, params.strides, params.se_ratio))
        cost = arch.count(depth=d)
        assert (cost.params, cost.macs) == (numel(reference), macs(reference, 64)), d


# ---- the conditional shortcut at scaled widths ------------------------------------------------------------


def test_first_block_projects_only_while_widths_differ(one_thread):
    """ResNet-50's layer1.0 projects at stride 1 because 64 != 256; at widths where the stem equals the
    stage width it is an identity, as torchvision builds it, and the count follows the built network."""
    model = make_model("torchvision:resnet50")
    arch = pyns.from_torch(model, (3, 64, 64))
    widths = dict(arch.defaults)
    widths["layer1_0_conv3"] = widths["conv1"]
    net = arch.build(widths)
    first = next(m for m in net.modules() if isinstance(m, ResidualBlock))
    assert first.add and first.shortcut is None
    cost = arch.count(widths)
    assert cost.params == numel(net) and cost.macs == macs(net, 64)
    models = import_torchvision().models
    reference = models.resnet.ResNet(models.resnet.Bottleneck, [3, 4, 6, 3])
    reference.layer1[0].downsample = None  # what torchvision builds when inplanes == planes * 4
    reference.layer1[0].conv3 = nn.Conv2d(64, 64, 1, bias=False)
    reference.layer1[0].bn3 = nn.BatchNorm2d(64)
    reference.layer1[1].conv1 = nn.Conv2d(64, 64, 1, bias=False)
    reference.layer1[1].conv3 = nn.Conv2d(64, 64, 1, bias=False)
    reference.layer1[1].bn3 = nn.BatchNorm2d(64)
    reference.layer1[2].conv1 = nn.Conv2d(64, 64, 1, bias=False)
    reference.layer1[2].conv3 = nn.Conv2d(64, 64, 1, bias=False)
    reference.layer1[2].bn3 = nn.BatchNorm2d(64)
    reference.layer2[0].conv1 = nn.Conv2d(64, 128, 1, bias=False)
    reference.layer2[0].downsample[0] = nn.Conv2d(64, 512, 1, stride=2, bias=False)
    assert cost.params == numel(reference) and cost.macs == macs(reference, 64)


def test_first_block_without_residual_adds_once_widths_agree(one_thread):
    """MobileNetV2's features.11 (64 -> 96, stride 1) has no add; at widths 64 -> 64 the DSL adds the
    identity (torchvision's `use_res_connect`), and counted and built networks agree."""
    arch = pyns.from_torch(make_model("torchvision:mobilenet_v2"), (3, 64, 64))
    widths = dict(arch.defaults)
    widths["features_11_conv_2"] = widths["features_7_conv_2"]
    net = arch.build(widths)
    adds = [m.add for m in net.modules() if isinstance(m, ResidualBlock)]
    default_adds = [m.add for m in arch.build().modules() if isinstance(m, ResidualBlock)]
    assert sum(adds) == sum(default_adds) + 1
    assert arch.count(widths).params == numel(net) and arch.count(widths).macs == macs(net, 64)


def test_default_widths_reproduce_the_module_with_first_blocks_inside_repeats(one_thread):
    model = make_model("torchvision:resnet18")
    arch = pyns.from_torch(model, (3, 64, 64))
    assert repeats(arch.to_text()) == [2, 2, 2, 2]
    paths = [p for _, p in arch.torch_layers]
    assert "layer2.0.downsample.0" in paths and "layer2.0.conv1" in paths  # the first block's own tensors
    again = pyns.loads(arch.to_text())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again.build(weights=model).eval()(x), model(x), rtol=1e-5, atol=1e-5)


class _AlwaysProject(nn.Module):
    """A stage whose first block projects although stride and widths agree: the DSL's conditional
    shortcut would drop that projection, so the block must stay outside the repeat."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(*[_Block(i == 0) for i in range(3)])
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class _Block(nn.Module):
    def __init__(self, project: bool):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.proj = nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)) if project else None

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)) + (self.proj(x) if self.proj is not None else x))


def test_a_projection_the_rule_would_drop_is_not_folded(one_thread):
    torch.manual_seed(0)
    model = _AlwaysProject().eval()
    arch = pyns.from_torch(model, (3, 16, 16))
    assert "always = 1" in arch.to_text() and repeats(arch.to_text()) == [2]
    assert arch.count().params == numel(model)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(arch.build(weights=model).eval()(x), model(x), rtol=1e-5, atol=1e-5)


def test_without_repeats_nothing_is_folded(one_thread):
    model = make_model("timm:efficientnet_b0")
    text = pyns.from_torch(model, (3, 64, 64), repeats=False).to_text()
    assert "repeat(" not in text and "first(" not in text and " in)" not in text
    arch = pyns.loads(text)
    assert arch.count().params == numel(model)
