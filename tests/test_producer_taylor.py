"""The pruner's fast Taylor path: dE/dz read off the producing layer's parameter gradients, and gates that
collect nothing running as the identity. Both are checked against the gate's own backward (the eager
reference of SPEC §5), in float64 so that only summation order separates the two."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pyns.arch import load
from pyns.builder import build_module
from pyns.gate import GateFunction, TaylorGate
from pyns.neuralscale.prune.importance import RULES, TaylorCollector
from pyns.neuralscale.prune.producer_taylor import ProducerTaylorCollector, gate_producers
from pyns.neuralscale.prune.shrink import mask_network
from pyns.neuralscale.prune.structure import PrunedNetwork


def _gated(name: str, ratio: float = 0.25):
    arch = load(name)
    widths = arch.uniform_widths(ratio)
    net = PrunedNetwork(arch, widths)
    torch.manual_seed(0)
    model = build_module(net.network, arch.widths(widths), gates=True).double()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # both collectors must see the same forward
        if isinstance(module, TaylorGate):
            module.accumulate = False
    # Non-trivial BN parameters: gamma 1 / beta 0 would hide a wrong beta term.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, arch.network.in_channels, arch.resolution, arch.resolution, dtype=torch.float64)
    y = torch.randint(0, 10, (4,))
    return net, model, x, y


def _importances(collector_type, net, model, x, y, rule, minibatches=2):
    collector = collector_type(model, net.classes, rule=rule)
    for k in range(minibatches):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[k:] if k else x), y[k:] if k else y).backward()
        collector.end_minibatch()
    values = [collector.importance(i) for i in range(len(net.classes))]
    collector.detach()
    return collector, values


# mobilenetv2: depthwise convs and derived (expansion) spaces; efficientnet_b0: squeeze-excite reduced
# gates sit after an activation, so they keep their own backward beside the producer-served ones.
@pytest.mark.parametrize("name", ["vgg11", "resnet18", "mobilenetv2", "efficientnet_b0"])
@pytest.mark.parametrize("rule", RULES)
def test_producer_gradients_give_the_gates_taylor_importance(name, rule):
    net, model, x, y = _gated(name)
    _, reference = _importances(TaylorCollector, net, model, x, y, rule)
    fast, values = _importances(ProducerTaylorCollector, net, model, x, y, rule)
    gates = [m for m in model.modules() if isinstance(m, TaylorGate)]
    assert fast.from_producers == len(gate_producers(model)) > 0
    if name == "efficientnet_b0":
        assert fast.from_producers < len(gates)  # the SE gates fall back to their own backward
    else:
        assert fast.from_producers == len(gates)
    for ref, got in zip(reference, values):
        # float64: the two are the same sums in another order (relative error ~1e-13 measured)
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12 * float(ref.abs().max()))
        assert float(ref.abs().max()) > 0


def test_masked_channels_read_zero_and_live_ones_match_the_gate():
    net, model, x, y = _gated("resnet18")
    members = net.symbol_classes[0]  # the stem class: tied to b1b and b2b by identity adds
    symbol = members[0]
    width = net.cmap.width(symbol, model.widths)
    keep = list(range(0, width, 2))
    mask_network(model, {m: keep for m in members if net.cmap.spaces[m].symbol})
    _, reference = _importances(TaylorCollector, net, model, x, y, "per-gate")
    _, values = _importances(ProducerTaylorCollector, net, model, x, y, "per-gate")
    for ref, got in zip(reference, values):
        assert got.shape == ref.shape
    live = torch.tensor(keep)
    torch.testing.assert_close(values[0][live], reference[0][live], rtol=1e-9, atol=0.0)
    dead = torch.tensor(sorted(set(range(width)) - set(keep)))
    assert torch.all(values[0][dead] == 0)  # masked: no gradient reaches its parameters


def test_a_gate_that_collects_nothing_is_the_identity_while_z_is_one():
    gate = TaylorGate(3, accumulate=False)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert gate(x) is x  # no multiply, no copy, no backward node
    grad = torch.randn(2, 3, 4, 4)
    (gate(x) * grad).sum().backward()
    reference, _ = torch.autograd.grad((GateFunction.apply(x, gate.z, None, None) * grad).sum(), [x, ]), None
    assert torch.equal(x.grad, reference[0])  # bit for bit: dE/dx = dE/dy * 1

    with torch.no_grad():
        gate.z[1] = 0.0  # an in-place write: the cached "all ones" must not survive it
    y = gate(x)
    assert y is not x
    assert torch.equal(y, x * gate.z.view(1, 3, 1, 1))
    x.grad = None
    (gate(x) * grad).sum().backward()
    assert torch.equal(x.grad, grad * gate.z.view(1, 3, 1, 1))

    gate.z = torch.ones(3)  # a replaced buffer is checked again too
    assert gate(x) is x
    with torch.no_grad():  # outside training the product stays (traced and exported graphs keep it)
        assert gate(x) is not x


def test_a_collecting_gate_still_runs_its_backward():
    gate = TaylorGate(3)  # accumulate=True: the module's own importance buffer
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    grad = torch.randn(2, 3, 4, 4)
    (gate(x) * grad).sum().backward()
    expected = ((grad * x.detach()).sum((0, 2, 3), dtype=torch.float64)) ** 2
    torch.testing.assert_close(gate.importance, expected, rtol=1e-5, atol=0.0)
    assert int(gate.batches) == 1
