"""Physical shrinking (pyns.neuralscale.prune.shrink): a shrunk network computes what the masked network computes.

The oracle is the masked full network: zeroing a channel at every gate of its width symbol is, by the
builder's gate placement, the same function as removing the channel. Networks are built at small widths
with random BN statistics and affine parameters so that a wrong channel mapping cannot go unnoticed.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pyns import ir
from pyns.arch import load, loads
from pyns.builder import build_module
from pyns.errors import PynsError
from pyns.channels import channel_map, pin_shortcuts
from pyns.cost.program import compile_program
from pyns.neuralscale.prune.keep import derived_keep, normalize_keep
from pyns.neuralscale.prune.shrink import mask_network, shrink_network

FLATNET = """
network flatnet(classes = 10, resolution = 8, in_channels = 1)
width c1 = 6, h = 12
body {
    conv(c1, 3, pad = 1)
    bn
    relu
    maxpool(2)
    flatten
    linear(h)
    bn
    relu
    linear(classes)
}
"""


def _randomise(model: nn.Module, generator: torch.Generator) -> None:
    """Random weights, BN affine parameters and running statistics: every channel is distinguishable."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
                module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.weight.copy_(torch.randn(module.num_features, generator=generator))
                module.bias.copy_(torch.randn(module.num_features, generator=generator))
            elif isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * 0.3)
                if module.bias is not None:
                    module.bias.copy_(torch.randn(module.bias.shape, generator=generator))


def _random_keep(model, generator: torch.Generator) -> dict[str, list[int]]:
    """About half the channels of every class of searchable widths (at least one; the same set for
    widths joined by identity adds), and for every derived width the new widths change, the channels
    with the largest of random scores (derived_keep: not the first ones)."""
    cmap = channel_map(model.ir, model.widths)
    keep: dict[str, list[int]] = {}
    for members in cmap.symbol_classes():
        width = cmap.width(members[0], model.widths)
        chosen = sorted(torch.randperm(width, generator=generator)[:max(1, width // 2)].tolist())
        for space in members:
            keep[space] = chosen
    scores = {space: torch.rand(cmap.width(space, model.widths), generator=generator) for space in cmap.spaces}
    return derived_keep(model, keep, scores)


# Small widths (and a small resolution for EfficientNet-B0) so that every case runs in about a second.
_CASES = {"digits_cnn": (None, None), "vgg11": (1 / 16, None), "resnet18": (1 / 16, None),
          "mobilenetv2": (1 / 8, None), "efficientnet_b0": (1 / 8, 64), "digits_effnet": (None, None)}


def _case(name: str):
    if name == "flatnet":
        return loads(FLATNET), None, None
    arch = load(name)
    ratio, resolution = _CASES[name]
    return arch, (arch.uniform_widths(ratio) if ratio else None), resolution


def _no_dropout(model: nn.Module) -> None:
    """Dropout draws a mask per element, so a network with fewer channels draws another mask: compare
    train-mode BatchNorm and SGD steps with dropout off (p = 0) in both networks."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


@pytest.mark.parametrize("name", ["digits_cnn", "vgg11", "resnet18", "flatnet", "mobilenetv2", "efficientnet_b0",
                                  "digits_effnet"])
def test_shrunk_network_computes_what_the_masked_network_computes(name):
    arch, widths, resolution = _case(name)
    generator = torch.Generator().manual_seed(7)
    full = arch.build(widths, gates=True, resolution=resolution)
    _randomise(full, generator)
    keep = _random_keep(full, generator)
    size = full.ir.resolution
    x = torch.randn(4, arch.network.in_channels, size, size, generator=generator)

    small, _, report = shrink_network(full, keep)
    assert report.exact, report
    symbols = {s: len(k) for s, k in keep.items() if s in full.widths}
    assert small.widths == {**full.widths, **symbols}
    # The cost engine counts exactly the module that was built.
    assert sum(p.numel() for p in small.parameters()) == arch.count(small.widths, resolution=resolution).params

    mask_network(full, keep)
    full.eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), full(x), rtol=1e-5, atol=1e-5)
        # Training mode normalises with batch statistics, channel by channel: still the same function.
        _no_dropout(full)
        _no_dropout(small)
        full.train()
        small.train()
        torch.testing.assert_close(small(x), full(x), rtol=1e-4, atol=1e-4)


def test_flatten_linear_keeps_every_spatial_feature_of_a_kept_channel():
    """Linear after Flatten of C x 4 x 4: kept channel c brings input features 16c .. 16c+15."""
    arch = loads(FLATNET)
    full = arch.build(gates=True)
    _randomise(full, torch.Generator().manual_seed(3))
    small, _, _ = shrink_network(full, {"c1": [1, 4], "h": [0, 5, 11]})
    old, new = full.layers[6].weight, small.layers[6].weight  # Linear(c1*16 -> h)
    expected = old[[0, 5, 11]][:, list(range(16, 32)) + list(range(64, 80))]
    assert torch.equal(new, expected)


def _sgd_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_momentum_buffers_follow_the_kept_channels():
    arch = load("digits_cnn")
    generator = torch.Generator().manual_seed(11)
    full = arch.build(gates=True)
    optimizer = torch.optim.SGD(full.parameters(), lr=0.05, momentum=0.5, weight_decay=5e-4)
    x = torch.randn(8, 1, 8, 8, generator=generator)
    y = torch.randint(0, 10, (8,), generator=generator)
    _sgd_step(full, optimizer, x, y)
    keep = {"c1": [0, 3, 5, 15], "c2": [1, 2, 30], "c3": [4, 31], "c4": [0, 7, 8, 47]}
    small, small_optimizer, _ = shrink_network(full, keep, optimizer)

    # Hand-written oracle of digits_cnn's layout: parameter -> (out symbol, in symbol) or (channels,).
    layout = {
        "layers.0.weight": ("c1", None), "layers.1.weight": ("c1",), "layers.1.bias": ("c1",),
        "layers.4.body.0.weight": ("c2", "c1"), "layers.4.body.1.weight": ("c2",),
        "layers.4.body.4.weight": ("c1", "c2"), "layers.4.body.5.bias": ("c1",),
        "layers.6.body.0.weight": ("c3", "c1"), "layers.6.body.4.weight": ("c4", "c3"),
        "layers.6.shortcut.0.weight": ("c4", "c1"), "layers.6.shortcut.1.weight": ("c4",),
        "layers.10.weight": (None, "c4"), "layers.10.bias": (None,),
    }
    def select(tensor: torch.Tensor, symbols: tuple) -> torch.Tensor:
        for dim, symbol in enumerate(symbols):
            if symbol is not None:
                tensor = tensor.index_select(dim, torch.tensor(keep[symbol]))
        return tensor

    old_params, new_params = dict(full.named_parameters()), dict(small.named_parameters())
    for name, symbols in layout.items():
        old_buffer = optimizer.state[old_params[name]]["momentum_buffer"]
        new_buffer = small_optimizer.state[new_params[name]]["momentum_buffer"]
        assert torch.equal(new_buffer, select(old_buffer, symbols)), name
        assert torch.equal(new_params[name].detach(), select(old_params[name].detach(), symbols)), name
    assert small_optimizer.param_groups[0]["lr"] == 0.05
    assert small_optimizer.param_groups[0]["momentum"] == 0.5
    assert len(small_optimizer.state) == len(list(small.parameters()))


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "efficientnet_b0", "digits_effnet"])
def test_training_continues_identically_after_shrinking(name):
    """Masked and shrunk networks with the same history take the same SGD steps: weights, BN statistics
    and momentum were all carried over, derived widths included."""
    arch, widths, resolution = _case(name)
    resolution = resolution if name != "resnet18" else 16  # 16x16: faster, same logic
    generator = torch.Generator().manual_seed(5)
    # float64: in float32, train-mode BatchNorm over 6 images amplifies the rounding differences of
    # convs over fewer channels to ~1e-4 after three steps; in float64 the two agree to ~1e-15.
    full = arch.build(widths, gates=True, resolution=resolution).double()
    _no_dropout(full)
    size = full.ir.resolution
    optimizer = torch.optim.SGD(full.parameters(), lr=0.05, momentum=0.5, weight_decay=5e-4)
    batches = [(torch.randn(6, arch.network.in_channels, size, size, generator=generator, dtype=torch.float64),
                torch.randint(0, 10, (6,), generator=generator)) for _ in range(3)]
    _sgd_step(full, optimizer, *batches[0])
    keep = _random_keep(full, generator)
    small, small_optimizer, _ = shrink_network(full, keep, optimizer)
    _no_dropout(small)
    mask_network(full, keep)
    for x, y in batches[1:]:
        _sgd_step(full, optimizer, x, y)
        _sgd_step(small, small_optimizer, x, y)
    full.eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(batches[0][0]), full(batches[0][0]), rtol=1e-10, atol=1e-10)


def test_vanishing_projection_is_reported_and_counted():
    """ResNet18 started with stem 16 != b1b 8 builds a projection in block 1; keeping 8 stem channels makes
    the widths equal, so the shrunk network adds the identity instead (a different architecture)."""
    arch = load("resnet18")
    widths = {**arch.uniform_widths(1 / 16), "stem": 16, "b1b": 8, "b2b": 8}
    full = arch.build(widths, gates=True)
    assert any("shortcut" in name for name, _ in full.named_modules() if name.startswith("layers.2."))
    small, _, report = shrink_network(full, {"stem": list(range(8))})
    assert report.dropped and all("shortcut" in name for name in report.dropped)
    assert not any("shortcut" in name for name, _ in small.named_modules() if name.startswith("layers.2."))
    assert sum(p.numel() for p in small.parameters()) == arch.count(small.widths).params
    assert not any({"stem", "b1b"} <= set(g) for g in ir.tied_groups(full.ir, full.widths))
    assert any({"stem", "b1b", "b2b"} <= set(g) for g in ir.tied_groups(small.ir, small.widths))


def test_derived_widths_keep_their_most_important_channels():
    """MobileNetV2's block 2 expands 6 x s1: when s1 loses a channel the expansion loses 6, and the 6
    lowest-scored ones go (here the first ones score highest, so truncating to the first k would be
    wrong). Without a keep set for a derived width that changes, shrinking refuses."""
    arch = load("mobilenetv2")
    full = arch.build(arch.uniform_widths(1 / 8), gates=True)
    _randomise(full, torch.Generator().manual_seed(4))
    assert full.widths["s1"] == 2
    with pytest.raises(PynsError, match=r"derived width `\(6 \* s1\)` of inverted2.conv1 changes from 12 to 6"):
        shrink_network(full, {"s1": [1]})
    scores = {"inverted2.conv1": torch.tensor([9.0, 1, 8, 2, 7, 3, 6, 4, 5, 0, 10, 11])}
    keep = derived_keep(full, {"s1": [1]}, scores)
    assert keep == {"s1": [1], "inverted2.conv1": [0, 2, 4, 6, 10, 11]}
    small, _, report = shrink_network(full, keep)
    assert report.exact
    old = dict(full.named_parameters())
    new = dict(small.named_parameters())
    expand, depthwise, project = "layers.5.body.0.weight", "layers.5.body.4.weight", "layers.5.body.8.weight"
    assert torch.equal(new[expand], old[expand][keep["inverted2.conv1"]][:, [1]])
    assert torch.equal(new[depthwise], old[depthwise][keep["inverted2.conv1"]])  # depthwise follows
    assert torch.equal(new[project], old[project][:, keep["inverted2.conv1"]])
    with pytest.raises(PynsError, match="names 5 channels, but its width `\\(6 \\* s1\\)` becomes 6"):
        shrink_network(full, {"s1": [1], "inverted2.conv1": [0, 1, 2, 3, 4]})


def test_keep_sets_are_checked():
    arch = load("resnet18")
    model = arch.build(arch.uniform_widths(1 / 16), gates=True)
    with pytest.raises(PynsError, match="same channels"):
        normalize_keep(model, {"stem": [0, 1]})  # stem is tied to b1b and b2b by identity adds
    with pytest.raises(PynsError, match="0..3"):
        normalize_keep(model, {"b1a": [0, 4]})
    with pytest.raises(PynsError, match="twice"):
        normalize_keep(model, {"b1a": [1, 1]})
    with pytest.raises(PynsError, match="not a searchable width"):
        normalize_keep(model, {"nope": [0]})
    assert normalize_keep(model, {"b1a": [3, 0, 1, 2]}) == {}  # everything kept: nothing to do


def test_pinned_shortcuts_keep_the_projection_and_the_masked_function():
    """The pruner's network pins its shortcuts at the start widths (pyns.channels.pin_shortcuts): when
    the stem becomes as narrow as b1b, block 1 keeps its projection, the classes do not merge, the cost
    engine counts the projection, and the shrunk network is still the masked one."""
    arch = load("resnet18")
    widths = arch.widths({**arch.uniform_widths(1 / 16), "stem": 16, "b1b": 8, "b2b": 8})
    network = pin_shortcuts(arch.network, widths)
    full = build_module(network, widths, gates=True)
    generator = torch.Generator().manual_seed(9)
    _randomise(full, generator)
    keep = {"stem": list(range(0, 16, 2))}
    small, _, report = shrink_network(full, keep)
    assert report.exact and small.widths["stem"] == small.widths["b1b"] == 8
    assert any("shortcut" in name for name, _ in small.named_modules() if name.startswith("layers.2."))
    before, after = channel_map(full.ir, full.widths), channel_map(small.ir, small.widths)
    assert after.classes == before.classes and ("stem",) in after.classes
    program, _ = compile_program(network)
    vec = np.array([float(small.widths[s]) for s in network.symbol_names])
    assert int(program.evaluate(vec)[0]) == sum(p.numel() for p in small.parameters())
    assert arch.count(small.widths).params < sum(p.numel() for p in small.parameters())  # unpinned: no projection
    mask_network(full, keep)
    x = torch.randn(2, 3, 32, 32, generator=generator)
    full.eval()
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small(x), full(x), rtol=1e-5, atol=1e-5)


def test_shrinking_initialises_nothing_and_draws_no_random_numbers(monkeypatch):
    """The new network is built on the meta device and filled from the old one: no init scheme runs
    (it used to be most of a prune step) and the RNG stream is untouched."""
    import pyns.builder as builder

    arch = load("vgg11")
    full = arch.build(arch.uniform_widths(1 / 16), gates=True)
    keep = _random_keep(full, torch.Generator().manual_seed(1))

    def refuse(module):
        raise AssertionError("shrink_network initialised a module")

    monkeypatch.setitem(builder.INITS, "neuralscale", refuse)
    state = torch.random.get_rng_state()
    small, _, _ = shrink_network(full, keep)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not any(t.is_meta for t in list(small.parameters()) + list(small.buffers()))
    assert all(torch.equal(g.z, torch.ones_like(g.z)) and g.importance.abs().sum() == 0 for g in small.gates())
