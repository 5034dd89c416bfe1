"""Exact counts: C++ cost program == pure-Python oracle == built torch module == public implementations."""
import json
import random

import numpy as np
import pytest
import torch

import reference_nets as R
from conftest import FIXTURES
from pyns.arch import load
from pyns.cost import oracle
from pyns.policies import scale_resolution
from pyns.resources import shipped_archs

REFERENCE = {m["name"]: m for m in json.loads((FIXTURES / "reference_models.json").read_text())["models"]}
IMAGENET = {"resnet18_imagenet": "resnet18", "resnet50": "resnet50", "mobilenet_v2_imagenet": "mobilenet_v2",
            "vgg11_bn_imagenet": "vgg11_bn", "efficientnet_b0": "efficientnet_b0"}
TINYNETS = {"a": (0.86, 1.2, 1.0), "b": (0.84, 1.1, 0.75), "c": (0.825, 0.85, 0.54),
            "d": (0.68, 0.695, 0.54), "e": (0.475, 0.60, 0.51)}


def numel(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name,ref", sorted(IMAGENET.items()))
def test_imagenet_references_match_public_implementations(name, ref):
    arch = load(name)
    cost = arch.count()
    expected = REFERENCE[ref]
    assert cost.params == expected["params"]
    assert cost.macs == expected["macs"]
    with torch.device("meta"):  # shapes only: no memory for VGG's 133M parameters
        model = arch.build()
    assert [list(p.shape) for p in model.parameters()] == [s for _, s in expected["param_shapes"]]


@pytest.mark.parametrize("letter", sorted(TINYNETS))
def test_released_tinynets_are_exact(letter):
    r, d, w = TINYNETS[letter]
    arch = load("efficientnet_b0", policy="tinynet")
    widths = arch.uniform_widths(w)
    resolution = scale_resolution(224, r)
    cost = arch.count(widths, depth=d, resolution=resolution)
    expected = REFERENCE[f"tinynet_{letter}"]
    assert resolution == expected["resolution"][0]
    assert (cost.params, cost.macs) == (expected["params"], expected["macs"])
    with torch.device("meta"):
        model = arch.build(widths, depth=d, resolution=resolution)
    assert [list(p.shape) for p in model.parameters()] == [s for _, s in expected["param_shapes"]]


@pytest.mark.parametrize("name,builder,defaults,kwargs", [
    ("vgg11", R.vgg11_cifar, R.VGG11_DEFAULT_WIDTHS, {}),
    ("vgg11:cifar100", R.vgg11_cifar, R.VGG11_DEFAULT_WIDTHS, {"num_classes": 100}),
    ("resnet18", R.preact_resnet18, R.PREACT_RESNET18_DEFAULT_WIDTHS, {}),
    ("resnet18:tinyimagenet", R.preact_resnet18, R.PREACT_RESNET18_DEFAULT_WIDTHS,
     {"tinyimagenet": True, "num_classes": 200}),
    ("mobilenetv2", R.mobilenetv2_neuralscale, R.MOBILENETV2_DEFAULT_WIDTHS, {}),
    ("mobilenetv2:tinyimagenet", R.mobilenetv2_neuralscale, R.MOBILENETV2_DEFAULT_WIDTHS,
     {"tinyimagenet": True, "num_classes": 200}),
])
def test_neuralscale_models_match_independent_reference_at_random_widths(name, builder, defaults, kwargs):
    arch = load(name)
    assert len(arch.searchable) == len(defaults)
    rng = random.Random(name)
    for trial in range(4):
        widths = defaults if trial == 0 else [rng.randint(1, 48) for _ in defaults]
        assignment = dict(zip(arch.searchable, widths))
        cost = arch.count(assignment)
        ref = builder(widths, **kwargs)
        assert cost.params == R.count_params(ref)
        assert cost.macs == R.macs(ref, arch.resolution)
        assert cost.params == numel(arch.build(assignment))


@pytest.mark.parametrize("ratio,expected", [(0.25, 579_786), (0.75, 5_195_338), (2, 36_894_218)])
def test_vgg11_uniform_widths_give_the_papers_sizes(ratio, expected):
    arch = load("vgg11")
    assert arch.count(arch.uniform_widths(ratio)).params == expected  # 0.58M / 5.20M / 36.89M


@pytest.mark.parametrize("ratio,expected", [(0.25, 199_354), (0.75, 1_423_654), (2, 9_301_524)])
def test_mobilenetv2_cifar100_uniform_widths_give_the_papers_sizes(ratio, expected):
    arch = load("mobilenetv2:cifar100")
    assert arch.count(arch.uniform_widths(ratio)).params == expected  # 0.20M / 1.42M / 9.30M


def _random_setting(arch, rng):
    # From 4 up: SE's round(0.25 * width) must stay >= 1 for the module to be a real network.
    widths = {s: rng.randint(4, 40) for s in arch.searchable}
    depth = rng.choice([1.0, 0.5, 0.75, 1.3, 2.0])
    resolution = rng.choice([None, arch.resolution + rng.randint(1, 16)])
    return widths, depth, resolution


@pytest.mark.parametrize("name", shipped_archs())
def test_cpp_equals_oracle_equals_module_on_random_settings(name):
    """Hundreds of random width/depth/resolution settings over all shipped architectures."""
    arch = load(name)
    rng = random.Random(1234)
    checked = 0
    for _ in range(40):
        widths, depth, resolution = _random_setting(arch, rng)
        cost = arch.count(widths, depth=depth, resolution=resolution)
        network = arch.ir(depth, resolution)
        assert (cost.params, cost.macs) == oracle.count(network, cost.widths)
        if checked < 4:  # building is the slow part: a few per arch
            with torch.device("meta"):
                model = arch.build(widths, depth=depth, resolution=resolution)
            assert cost.params == numel(model)
            assert cost.macs == R.macs(model, network.resolution, network.in_channels)
        checked += 1
    assert checked >= 30


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "mobilenetv2"])
def test_batch_evaluation_equals_single_evaluation(name):
    arch = load(name)
    rng = np.random.default_rng(0)
    batch = rng.integers(1, 64, size=(200, len(arch.symbols))).astype(np.float64)
    params, macs = arch.count_batch(batch)
    for i in range(0, 200, 17):
        cost = arch.count(dict(zip(arch.network.symbol_names, batch[i].astype(int).tolist())))
        assert (params[i], macs[i]) == (cost.params, cost.macs)


def test_per_layer_rows_sum_to_the_totals_and_name_layers():
    arch = load("resnet18")
    cost = arch.count(per_layer=True)
    assert sum(r.params for r in cost.layers) == cost.params
    assert sum(r.macs for r in cost.layers) == cost.macs
    names = [r.name for r in cost.layers]
    assert len(names) == len(set(names))
    assert any(".shortcut.conv" in n for n in names)  # the strided blocks' projections are counted
