"""Checks of the plain-torch oracles in tests/reference_nets.py.

The oracles are what pyns's DSL models are compared against, so they are pinned here three ways:
  1. the parameter counts the NeuralScale paper prints for uniform scaling (Table 1 / supp. Table 2);
  2. closed-form parameter and MAC formulas written from SPEC §4 independently of the modules,
     at random widths;
  3. structural facts (which blocks get a conv shortcut, output shapes, init).

MobileNetV2 interpretation (this matters for pyns): the paper's 0.20M / 1.42M / 9.30M
(CIFAR-100, r = 0.25 / 0.75 / 2) are reproduced only when int(w*r) is applied to ALL 19 widths,
the stem's 32 and the head's 1280 included (exact counts 199,354 / 1,423,654 / 9,301,524).
Keeping the head at 1280 gives 0.38M / 1.53M / 8.35M and keeping the stem at 32 gives
0.20M / 1.42M / 9.29M; both are rejected by the test below.
"""

from __future__ import annotations

import os
import random
import sys

import pytest
import torch
import torch.nn as nn

# tests/ has no __init__.py; make the sibling oracle importable however pytest is invoked
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reference_nets as R  # noqa: E402


def _params_on_meta(build, *args, **kwargs) -> int:
    """Parameter count without allocating or initialising weights (the r=2 nets hold ~45M)."""
    with torch.device("meta"):
        model = build(*args, **kwargs)
    return R.count_params(model)


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f}"


# --- 1. the paper's numbers ------------------------------------------------------------------

# (ratio, exact count measured here, the paper's rounded value)
VGG11_CIFAR10 = [(0.25, 579_786, "0.58"), (0.75, 5_195_338, "5.20"), (2, 36_894_218, "36.89")]
VGG11_CIFAR100 = [(0.25, 591_396, "0.59"), (0.75, 5_229_988, "5.23"), (2, 36_986_468, "36.99")]
MBV2_CIFAR100 = [(0.25, 199_354, "0.20"), (0.75, 1_423_654, "1.42"), (2, 9_301_524, "9.30")]
MBV2_TINY = [(0.25, 231_454, "0.23"), (0.75, 1_519_754, "1.52")]
RESNET_CIFAR100 = [(0.25, 712_628, "0.71"), (0.75, 6_321_748, "6.32"), (2, 44_751_588, "44.75")]
RESNET_TINY = [(0.25, 725_784, "0.73"), (0.75, 6_362_552, "6.36")]


@pytest.mark.parametrize("ratio,exact,paper", VGG11_CIFAR10)
def test_vgg11_cifar10_uniform_matches_paper(ratio, exact, paper):
    n = _params_on_meta(R.vgg11_cifar, R.uniform_widths(R.VGG11_DEFAULT_WIDTHS, ratio), 10)
    assert _millions(n) == paper
    assert n == exact


@pytest.mark.parametrize("ratio,exact,paper", VGG11_CIFAR100)
def test_vgg11_cifar100_uniform_matches_paper(ratio, exact, paper):
    n = _params_on_meta(R.vgg11_cifar, R.uniform_widths(R.VGG11_DEFAULT_WIDTHS, ratio), 100)
    assert (_millions(n), n) == (paper, exact)


@pytest.mark.parametrize("ratio,exact,paper", MBV2_CIFAR100)
def test_mobilenetv2_cifar100_uniform_matches_paper(ratio, exact, paper):
    widths = R.uniform_widths(R.MOBILENETV2_DEFAULT_WIDTHS, ratio)
    n = _params_on_meta(R.mobilenetv2_neuralscale, widths, 100)
    assert (_millions(n), n) == (paper, exact)


@pytest.mark.parametrize("ratio,exact,paper", MBV2_TINY)
def test_mobilenetv2_tinyimagenet_uniform_matches_paper(ratio, exact, paper):
    widths = R.uniform_widths(R.MOBILENETV2_DEFAULT_WIDTHS, ratio)
    n = _params_on_meta(R.mobilenetv2_neuralscale, widths, 200, tinyimagenet=True)
    assert (_millions(n), n) == (paper, exact)


@pytest.mark.parametrize("ratio,exact,paper", RESNET_CIFAR100)
def test_preact_resnet18_cifar100_uniform_matches_paper(ratio, exact, paper):
    widths = R.uniform_widths(R.PREACT_RESNET18_DEFAULT_WIDTHS, ratio)
    n = _params_on_meta(R.preact_resnet18, widths, 100)
    assert (_millions(n), n) == (paper, exact)


@pytest.mark.parametrize("ratio,exact,paper", RESNET_TINY)
def test_preact_resnet18_tinyimagenet_uniform_matches_paper(ratio, exact, paper):
    widths = R.uniform_widths(R.PREACT_RESNET18_DEFAULT_WIDTHS, ratio)
    n = _params_on_meta(R.preact_resnet18, widths, 200, tinyimagenet=True)
    assert (_millions(n), n) == (paper, exact)


def test_mobilenetv2_stem_and_head_must_be_scaled_to_match_paper():
    """The alternative readings (stem or head not scaled) miss at least one of the paper's numbers."""
    paper = [p for _, _, p in MBV2_CIFAR100]
    for fixed in ({0}, {18}, {0, 18}):  # indices of widths left unscaled
        counts = []
        for ratio, _, _ in MBV2_CIFAR100:
            widths = [w if i in fixed else int(w * ratio)
                      for i, w in enumerate(R.MOBILENETV2_DEFAULT_WIDTHS)]
            counts.append(_millions(_params_on_meta(R.mobilenetv2_neuralscale, widths, 100)))
        assert counts != paper, f"leaving widths {fixed} unscaled also matched the paper"


# --- 2. closed-form formulas at random widths -------------------------------------------------

def vgg_formula(w: list[int], classes: int) -> tuple[int, int]:
    """(params, MACs) of VGG11-CIFAR at 32x32."""
    sides = [32, 16, 8, 8, 4, 4, 2, 2]  # map side seen by each conv (pools after convs 1, 2, 4, 6, 8)
    params = macs = 0
    c_in = 3
    for c_out, side in zip(w, sides):
        params += 9 * c_in * c_out + c_out + 2 * c_out  # conv weight + bias, BN gamma + beta
        macs += 9 * c_in * c_out * side * side
        c_in = c_out
    params += w[-1] * classes + classes
    macs += w[-1] * classes
    return params, macs


def resnet_formula(w: list[int], classes: int, tiny: bool) -> tuple[int, int]:
    """(params, MACs) of PreAct-ResNet18 at 32x32 (CIFAR) or 64x64 (TinyImageNet)."""
    side = 64 if tiny else 32
    params, macs = 27 * w[0], 27 * w[0] * side * side
    strides = [2, 2, 2, 2] if tiny else [1, 2, 2, 2]
    c_in = w[0]
    for i in range(8):
        stride = strides[i // 2] if i % 2 == 0 else 1
        mid, out = w[1 + 2 * i], w[2 + 2 * i]
        side //= stride
        params += 2 * c_in + 9 * c_in * mid + 2 * mid + 9 * mid * out
        macs += (9 * c_in * mid + 9 * mid * out) * side * side
        if stride != 1 or c_in != out:
            params += c_in * out
            macs += c_in * out * side * side
        c_in = out
    params += 2 * c_in + c_in * classes + classes
    macs += c_in * classes
    return params, macs


def mbv2_formula(w: list[int], classes: int, tiny: bool) -> tuple[int, int]:
    """(params, MACs) of the NeuralScale MobileNetV2 at 32x32 / 64x64; every conv has a bias."""
    side = 64 if tiny else 32
    params, macs = 27 * w[0] + 3 * w[0], 27 * w[0] * side * side
    strides = [1, 2, 2, 2, 2 if tiny else 1, 2, 1]
    repeats = [1, 2, 3, 4, 3, 3, 1]
    c_in, k = w[0], 1
    for stage, (n, s) in enumerate(zip(repeats, strides)):
        t = 1 if stage == 0 else 6
        for j in range(n):
            stride = s if j == 0 else 1
            out, hidden = w[k], c_in * t
            side_in, side = side, side // stride
            params += (c_in * hidden + 3 * hidden) + (9 * hidden + 3 * hidden) + (hidden * out + 3 * out)
            macs += c_in * hidden * side_in ** 2 + 9 * hidden * side ** 2 + hidden * out * side ** 2
            if stride != 1 or c_in != out:
                params += c_in * out + 3 * out
                macs += c_in * out * side ** 2
            c_in, k = out, k + 1
    params += c_in * w[18] + 3 * w[18] + w[18] * classes + classes
    macs += c_in * w[18] * side ** 2 + w[18] * classes
    return params, macs


def _random_widths(rng: random.Random, n: int) -> list[int]:
    # small widths keep the forward pass for the MAC hook cheap; 1 exercises the degenerate edge
    return [rng.randint(1, 24) for _ in range(n)]


@pytest.mark.parametrize("seed", range(4))
def test_vgg_matches_closed_form(seed):
    w = _random_widths(random.Random(seed), 8)
    model = R.vgg11_cifar(w, num_classes=7)
    assert (R.count_params(model), R.macs(model, 32)) == vgg_formula(w, 7)


@pytest.mark.parametrize("seed,tiny", [(s, t) for s in range(3) for t in (False, True)])
def test_preact_resnet18_matches_closed_form(seed, tiny):
    w = _random_widths(random.Random(100 + seed), 17)
    model = R.preact_resnet18(w, num_classes=13, tinyimagenet=tiny)
    assert (R.count_params(model), R.macs(model, 64 if tiny else 32)) == resnet_formula(w, 13, tiny)


@pytest.mark.parametrize("seed,tiny", [(s, t) for s in range(3) for t in (False, True)])
def test_mobilenetv2_matches_closed_form(seed, tiny):
    w = _random_widths(random.Random(200 + seed), 19)
    model = R.mobilenetv2_neuralscale(w, num_classes=11, tinyimagenet=tiny)
    assert (R.count_params(model), R.macs(model, 64 if tiny else 32)) == mbv2_formula(w, 11, tiny)


def test_default_widths_formulas_agree_with_modules():
    # the full-size defaults, counted on meta (params only) to stay fast
    assert _params_on_meta(R.vgg11_cifar, None, 10) == vgg_formula(R.VGG11_DEFAULT_WIDTHS, 10)[0]
    assert _params_on_meta(R.preact_resnet18, None, 10) == \
        resnet_formula(R.PREACT_RESNET18_DEFAULT_WIDTHS, 10, False)[0]
    assert _params_on_meta(R.mobilenetv2_neuralscale, None, 100) == \
        mbv2_formula(R.MOBILENETV2_DEFAULT_WIDTHS, 100, False)[0]


# --- 3. structure, shapes, init, the MAC counter ---------------------------------------------

def test_default_width_lists():
    assert R.VGG11_DEFAULT_WIDTHS == [64, 128, 256, 256, 512, 512, 512, 512]
    assert R.PREACT_RESNET18_DEFAULT_WIDTHS == [64, 64, 64, 64, 64, 128, 128, 128, 128,
                                                256, 256, 256, 256, 512, 512, 512, 512]
    assert R.MOBILENETV2_DEFAULT_WIDTHS == [32, 16, 24, 24, 32, 32, 32, 64, 64, 64, 64,
                                            96, 96, 96, 160, 160, 160, 320, 1280]


def test_conv_shortcuts_only_where_stride_or_width_changes():
    mb = R.mobilenetv2_neuralscale()
    # 32->16 (t=1), 16->24 s2, 24->32 s2, 32->64 s2, 64->96, 96->160 s2, 160->320
    assert [i for i, b in enumerate(mb.blocks) if b.shortcut is not None] == [0, 1, 3, 6, 10, 13, 16]
    rn = R.preact_resnet18()
    assert [i for i, b in enumerate(rn.blocks) if b.shortcut is not None] == [2, 4, 6]
    # equal widths at stride 1 but a different mid width: still identity (only in/out matter)
    w = list(R.PREACT_RESNET18_DEFAULT_WIDTHS)
    w[1] = 5
    assert R.preact_resnet18(w).blocks[0].shortcut is None
    # the first block of the t=1 stage keeps an expand conv of width t*in = in
    assert mb.blocks[0].residual[0].out_channels == 32


@pytest.mark.parametrize("build,tiny", [(R.vgg11_cifar, False), (R.preact_resnet18, False),
                                        (R.preact_resnet18, True), (R.mobilenetv2_neuralscale, False),
                                        (R.mobilenetv2_neuralscale, True)])
def test_forward_shapes(build, tiny):
    rng = random.Random(7)
    n_widths = {R.vgg11_cifar: 8, R.preact_resnet18: 17, R.mobilenetv2_neuralscale: 19}[build]
    w = _random_widths(rng, n_widths)
    model = build(w, num_classes=9, **({"tinyimagenet": True} if tiny else {}))
    side = 64 if tiny else 32
    assert model(torch.randn(2, 3, side, side)).shape == (2, 9)


def test_final_feature_map_sides():
    # ResNet: 32 / (1*2*2*2) = 4 on CIFAR, 64 / 2**4 = 4 on TinyImageNet.
    # MobileNetV2: 32 / 2**4 = 2 on CIFAR; the extra stride-2 fifth stage gives 64 / 2**5 = 2 on Tiny.
    seen: dict[str, int] = {}
    for tiny in (False, True):
        side = 64 if tiny else 32
        rn = R.preact_resnet18(tinyimagenet=tiny).eval()
        mb = R.mobilenetv2_neuralscale(tinyimagenet=tiny).eval()
        rn.bn_out.register_forward_hook(lambda m, i, o, t=tiny: seen.__setitem__(f"rn{t}", o.shape[-1]))
        mb.head[0].register_forward_hook(lambda m, i, o, t=tiny: seen.__setitem__(f"mb{t}", o.shape[-1]))
        with torch.no_grad():
            rn(torch.zeros(1, 3, side, side))
            mb(torch.zeros(1, 3, side, side))
    assert seen == {"rnFalse": 4, "rnTrue": 4, "mbFalse": 2, "mbTrue": 2}


def test_preact_conv_shortcut_reads_the_preactivated_input():
    # with the residual convs zeroed, a downsampling block outputs shortcut(relu(bn1(x))) only
    torch.manual_seed(1)
    block = R.PreActBlock(in_ch=4, mid_ch=3, out_ch=6, stride=2).eval()
    nn.init.zeros_(block.conv2.weight)
    nn.init.normal_(block.bn1.running_mean)
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        expected = nn.functional.conv2d(torch.relu(block.bn1(x)), block.shortcut.weight, stride=2)
        assert torch.allclose(block(x), expected)
        # and an identity block adds the raw, not the pre-activated, input
        ident = R.PreActBlock(in_ch=4, mid_ch=3, out_ch=4, stride=1).eval()
        nn.init.zeros_(ident.conv2.weight)
        assert torch.equal(ident(x), x)


def test_vgg_init_follows_spec():
    torch.manual_seed(0)
    model = R.vgg11_cifar()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(bn.weight == 0.5) and torch.all(bn.bias == 0) for bn in bns)
    assert abs(model.classifier.weight.std().item() - 0.01) < 0.001  # 5120 samples of N(0, 0.01)
    conv = model.features[0]
    assert torch.all(conv.bias == 0)
    # Kaiming fan_out: std = sqrt(2 / (C_out * 9)) = sqrt(2/576) for the 64-wide first conv
    expected = (2 / (64 * 9)) ** 0.5
    assert abs(conv.weight.std().item() - expected) / expected < 0.1


def test_macs_counter_on_a_hand_computed_net():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),           # 9*3*8 * 5*5 = 5400
        nn.Conv2d(8, 8, 3, padding=1, groups=4),           # 9*2*8 * 5*5 = 3600
        nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 3),                                   # 24
    )
    assert R.macs(net, 10) == 5400 + 3600 + 24
    assert [n for n, _ in R.macs_per_layer(net, 10)] == ["0", "1", "6"]


def test_widths_are_validated():
    with pytest.raises(ValueError):
        R.vgg11_cifar([64] * 7)
    with pytest.raises(ValueError):
        R.mobilenetv2_neuralscale([0] + R.MOBILENETV2_DEFAULT_WIDTHS[1:])
