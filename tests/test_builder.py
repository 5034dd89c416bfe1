"""The torch builder: init, gates, residual semantics, forward shapes."""
import pytest
import torch

from pyns import ir
from pyns.arch import load
from pyns.channels import channel_map
from pyns.builder import ResidualBlock


def test_neuralscale_init():
    model = load("vgg11").build()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(bn.weight == 0.5) for bn in bns)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][0]
    assert abs(linear.weight.std().item() - 0.01) < 0.002
    conv = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][1]  # fan_out = 128 * 9
    expected = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert abs(conv.weight.std().item() - expected) / expected < 0.1


@pytest.mark.parametrize("name", ["vgg11", "resnet18", "mobilenetv2", "digits_cnn", "efficientnet_b0"])
def test_gates_cover_every_searchable_symbol_and_are_not_parameters(name):
    arch = load(name)
    plain = sum(p.numel() for p in arch.build().parameters())
    gated = arch.build(gates=True)
    assert sum(p.numel() for p in gated.parameters()) == plain == arch.count().params
    # One gate label per channel space: every searchable symbol, and every width derived from them
    # (MobileNetV2's expansions `6 * in`, EfficientNet's `make_divisible(6 * in)` and SE reduced widths).
    cmap = channel_map(arch.network, arch.defaults)
    assert {g.symbol for g in gated.gates()} == set(cmap.spaces)
    assert set(arch.searchable) <= set(cmap.spaces)
    derived = {s for s, space in cmap.spaces.items() if space.symbol is None}
    assert bool(derived) == (name in ("mobilenetv2", "efficientnet_b0"))
    for gate in gated.gates():
        assert gate.z.numel() == cmap.width(gate.symbol, arch.defaults)


def test_gated_forward_equals_plain_forward():
    arch = load("digits_cnn")
    torch.manual_seed(0)
    plain = arch.build().eval()
    gated = arch.build(gates=True).eval()
    result = gated.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.rsplit(".", 1)[1] in ("z", "importance", "batches")
                                       for k in result.missing_keys)
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(plain(x), gated(x))


def test_masking_a_tied_channel_at_every_gate_equals_zeroing_it_everywhere():
    """Zero channel 3 of c1's group: the residual stream must carry 0 there on both add operands."""
    arch = load("digits_cnn")
    model = arch.build(gates=True).eval()
    groups = ir.tied_groups(arch.network, arch.defaults)
    assert sorted(next(g for g in groups if "c1" in g)) == ["c1"]  # c2 is the block's inner width
    for gate in model.gates():
        if gate.symbol == "c1":
            gate.z[3] = 0
    captured = {}
    block = next(m for m in model.modules() if isinstance(m, ResidualBlock))
    block.register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    model(torch.randn(2, 1, 8, 8))
    assert torch.all(captured["out"][:, 3] == 0)


def test_mobilenet_residual_modes():
    arch = load("mobilenet_v2_imagenet")
    model = arch.build()
    blocks = [m for m in model.modules() if isinstance(m, ResidualBlock)]
    assert len(blocks) == 17
    assert sum(b.add for b in blocks) == 10  # torchvision: residual only at stride 1 with equal widths
    assert all(b.shortcut is None for b in blocks)
    out = model.eval()(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1000)
