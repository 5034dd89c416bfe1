"""The fused pruning gate (pyns.gate) against eager torch (SPEC §5 "Gate")."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import pyns.gate as gate_mod
from pyns.errors import PynsError
from pyns.gate import GateFunction, TaylorGate, fused_available, gate_backward, gate_backward_reference

HAVE_FUSED_CPU = fused_available("cpu")
needs_fused = pytest.mark.skipif(not HAVE_FUSED_CPU, reason="pyns._core without the CPU gate kernel")


def _oracle_g(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-channel sum of grad * x in float64 (independent of the code under test)."""
    return torch.einsum("nc...,nc...->c", grad.double(), x.double())


def _make(shape, dtype=torch.float32, channels_last=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen).to(dtype)
    grad = torch.randn(shape, generator=gen).to(dtype)
    if channels_last:
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        x, grad = x.contiguous(memory_format=fmt), grad.contiguous(memory_format=fmt)
    return x, grad


@pytest.fixture
def no_eager(monkeypatch):
    """Makes the eager fallback fail, so that a passing test proves the fused kernel ran."""
    def refuse(*args, **kwargs):
        raise AssertionError("the eager fallback ran instead of the fused kernel")
    monkeypatch.setattr(gate_mod, "gate_backward_reference", refuse)


# (shape, dtype, channels_last). Sizes above 32K elements take the multi-threaded path.
CASES = [
    ((4, 6, 5, 7), torch.float32, False),
    ((16, 8, 32, 32), torch.float32, False),
    ((16, 8, 32, 32), torch.float32, True),
    ((3, 5, 4, 4), torch.float32, True),
    ((33, 20), torch.float32, False),  # BN1d: [N, C]
    ((300, 200), torch.float32, False),
    ((5, 7, 11), torch.float32, False),  # BN1d over sequences: [N, C, L]
    ((2, 3, 4, 5, 6), torch.float32, True),  # channels_last_3d
    ((16, 8, 32, 32), torch.bfloat16, False),
    ((16, 8, 32, 32), torch.bfloat16, True),
    ((16, 8, 32, 32), torch.float16, False),
    ((16, 8, 32, 32), torch.float16, True),
    ((40, 24), torch.float16, False),
    ((4, 6, 5, 7), torch.float64, True),
    ((64, 1, 16, 16), torch.float32, False),  # fewer channels than threads
]


@needs_fused
@pytest.mark.parametrize("shape,dtype,channels_last", CASES)
def test_fused_backward_matches_eager(shape, dtype, channels_last, no_eager):
    x, grad = _make(shape, dtype, channels_last)
    c = shape[1]
    z = torch.linspace(-1.5, 2.0, c)
    z[0] = 0.0  # a masked channel
    importance = torch.full((c,), 0.25, dtype=torch.float64)
    batches = torch.tensor(3, dtype=torch.int64)

    grad_input, g = gate_backward(grad, x, z, importance, batches)

    # grad * z is one rounding of an exact product in both implementations: identical bits.
    expected_input = grad * z.to(dtype).view([1, c] + [1] * (len(shape) - 2))
    assert grad_input.dtype == dtype and grad_input.stride() == x.stride()
    assert torch.equal(grad_input, expected_input)
    assert torch.all(grad_input[:, 0] == 0)
    expected_g = _oracle_g(grad, x)
    # float32 partial sums over runs of at most 512 terms: error far below 1e-5 of the magnitude.
    scale = torch.einsum("nc...->c", (grad.double() * x.double()).abs())
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.all((g - expected_g).abs() <= tol * scale + 1e-30)
    assert torch.allclose(importance, 0.25 + expected_g ** 2, rtol=2 * tol, atol=1e-30)
    assert batches.item() == 4


@needs_fused
def test_grad_input_skipped_when_not_wanted(no_eager):
    x, grad = _make((8, 4, 9, 9))
    grad_input, g = gate_backward(grad, x, torch.ones(4), need_grad_input=False)
    assert grad_input is None
    assert torch.allclose(g, _oracle_g(grad, x), rtol=1e-5)


@needs_fused
def test_layouts_that_differ_or_have_gaps(no_eager):
    """x strided with gaps falls back to a copy; grad in another layout than x is re-laid out."""
    base, grad_cl = _make((6, 10, 8, 8), channels_last=True)
    x = base[:, ::2]  # every other channel: neither NCHW nor channels_last in memory
    grad = grad_cl[:, :5].contiguous()  # NCHW while x is not
    z = torch.rand(5)
    grad_input, g = gate_backward(grad, x, z)
    assert torch.equal(grad_input, grad * z.view(1, 5, 1, 1))
    assert torch.allclose(g, _oracle_g(grad, x), rtol=1e-5)

    x_cl, grad_cl = _make((6, 5, 8, 8), channels_last=True)
    grad_nchw = grad_cl.contiguous()
    grad_input, g = gate_backward(grad_nchw, x_cl, z)
    assert torch.equal(grad_input, grad_nchw * z.view(1, 5, 1, 1))
    assert torch.allclose(g, _oracle_g(grad_nchw, x_cl), rtol=1e-5)


@needs_fused
def test_expanded_grad_from_sum_backward(no_eager):
    """loss = y.sum() hands backward an expanded (stride 0) gradient of ones."""
    gate = TaylorGate(3)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    gate(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert torch.allclose(gate.importance, x.detach().sum((0, 2, 3)).double() ** 2, rtol=1e-5)


@needs_fused
def test_importance_accumulates_over_minibatches(no_eager):
    gate = TaylorGate(6)
    gate.z[2] = 0.0
    expected = torch.zeros(6, dtype=torch.float64)
    for step in range(5):
        x = torch.randn(8, 6, 4, 4, requires_grad=True)
        target = torch.randn(8, 6, 4, 4)
        loss = ((gate(x) - target) ** 2).mean()  # batch-mean loss
        loss.backward()
        y = (x.detach() * gate.z.view(1, 6, 1, 1)).requires_grad_(True)
        dloss_dy, = torch.autograd.grad(((y - target) ** 2).mean(), y)
        expected += _oracle_g(dloss_dy, x.detach()) ** 2
    assert gate.batches.item() == 5
    assert torch.allclose(gate.importance, expected, rtol=1e-5, atol=1e-20)
    assert torch.allclose(gate.mean_importance(), expected / 5, rtol=1e-5, atol=1e-20)

    gate.reset_importance()
    assert gate.batches.item() == 0 and torch.all(gate.importance == 0)
    assert torch.all(gate.mean_importance() == 0)


@needs_fused
def test_accumulate_off_keeps_buffers_and_gradient(no_eager):
    gate = TaylorGate(4, accumulate=False)
    x = torch.randn(3, 4, 6, 6, requires_grad=True)
    upstream = torch.randn(3, 4, 6, 6)
    gate.z[1] = 0.0
    gate(x).backward(upstream)
    assert gate.batches.item() == 0 and torch.all(gate.importance == 0)
    assert torch.equal(x.grad, upstream * gate.z.view(1, 4, 1, 1))


def test_gate_matches_network_without_it():
    """With z = ones the gate is the identity: a net with BN -> gate -> ReLU(inplace) has exactly the
    gradients of the same net without the gate, and the importance is (sum grad*activation)^2."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
    gate = TaylorGate(8)
    head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 6 * 6, 5))
    data, labels = torch.randn(10, 3, 6, 6), torch.randint(0, 5, (10,))

    def loss_of(use_gate: bool) -> torch.Tensor:
        act = bn(conv(data))
        if use_gate:
            act = gate(act)
        return nn.functional.cross_entropy(head(nn.functional.relu(act, inplace=True)), labels)

    with_gate = torch.autograd.grad(loss_of(True), list(conv.parameters()))
    without = torch.autograd.grad(loss_of(False), list(conv.parameters()))
    for a, b in zip(with_gate, without):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-9)

    act = bn(conv(data)).detach().requires_grad_(True)
    loss = nn.functional.cross_entropy(head(nn.functional.relu(act)), labels)
    dloss_dact, = torch.autograd.grad(loss, act)
    assert gate.batches.item() == 1
    assert torch.allclose(gate.importance, _oracle_g(dloss_dact, act.detach()) ** 2, rtol=1e-5)


@pytest.mark.parametrize("shape,channels_last", [((3, 4, 3, 2), False), ((3, 4, 3, 2), True),
                                                  ((5, 3), False)])
def test_gradcheck_float64(shape, channels_last, monkeypatch):
    called = []
    if HAVE_FUSED_CPU:  # float64 on CPU must take the C++ path
        real = gate_mod._fused_backward
        monkeypatch.setattr(gate_mod, "_fused_backward", lambda *a: called.append(1) or real(*a))
    x, _ = _make(shape, torch.float64, channels_last)
    x.requires_grad_(True)
    z = torch.rand(shape[1], dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x, z: GateFunction.apply(x, z, None, None), (x, z))
    assert bool(called) == HAVE_FUSED_CPU


def test_reference_is_exact_for_half_precision():
    """The eager fallback's float32 products of half-precision numbers are exact."""
    for dtype in (torch.bfloat16, torch.float16):
        x, grad = _make((4, 3, 5, 5), dtype)
        _, g = gate_backward_reference(grad, x, torch.ones(3))
        assert torch.allclose(g, _oracle_g(grad, x), rtol=1e-6)


def test_eager_fallback_when_no_kernel(monkeypatch):
    monkeypatch.setattr(gate_mod, "fused_available", lambda device: False)
    x, grad = _make((4, 3, 5, 5))
    importance, batches = torch.zeros(3, dtype=torch.float64), torch.zeros((), dtype=torch.int64)
    grad_input, g = gate_backward(grad, x, torch.ones(3), importance, batches)
    assert torch.equal(grad_input, grad)
    assert torch.allclose(importance, _oracle_g(grad, x) ** 2, rtol=1e-5)
    assert batches.item() == 1


def test_buffers_are_not_parameters():
    gate = TaylorGate(7)
    assert list(gate.parameters()) == []
    assert {name for name, _ in gate.named_buffers()} == {"z", "importance", "batches"}
    assert set(gate.state_dict()) == {"z", "importance", "batches"}
    net = nn.Sequential(nn.Conv2d(3, 7, 3), nn.BatchNorm2d(7), gate)
    assert sum(p.numel() for p in net.parameters()) == 3 * 7 * 9 + 7 + 2 * 7


def test_dtype_conversion_keeps_float64_importance():
    gate = TaylorGate(3)
    gate.importance.copy_(torch.tensor([1e-30, 2.0, 3.0], dtype=torch.float64))
    gate.half()
    assert gate.z.dtype == torch.float16
    assert gate.importance.dtype == torch.float64
    assert gate.importance[0].item() == 1e-30  # would underflow to 0 in float16


def test_eval_forward_and_errors():
    gate = TaylorGate(4)
    gate.z[3] = 0.0
    x = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        y = gate(x)
    assert torch.equal(y[:, :3], x[:, :3]) and torch.all(y[:, 3] == 0)
    with pytest.raises(PynsError, match="C = 4 channels"):
        gate(torch.randn(2, 5, 3, 3))
    with pytest.raises(PynsError, match="importance buffer"):
        gate_backward(x, x, gate.z, torch.zeros(4, dtype=torch.float32))


@needs_fused
@pytest.mark.parametrize("dtype,code", [(torch.float16, 3), (torch.bfloat16, 2)])
def test_half_conversions_bit_exact(dtype, code):
    """The kernel's own float <-> half conversions agree with torch's bit for bit, including
    subnormals, infinities, overflow and round-half-to-even ties."""
    from pyns import _core
    every = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)
    widened = torch.empty(65536, dtype=torch.float32)
    _core.gate_half_bits_to_float(every.data_ptr(), widened.data_ptr(), 65536, code)
    expected = every.float()
    assert torch.equal(widened.isnan(), expected.isnan())
    keep = ~expected.isnan()
    assert torch.equal(widened[keep].view(torch.int32), expected[keep].view(torch.int32))

    finite = expected[expected.isfinite()].unique()  # sorted
    ties = ((finite[:-1].double() + finite[1:].double()) / 2).float()  # exact midpoints in float32
    gen = torch.Generator().manual_seed(1)
    values = torch.cat([finite, ties, ties.nextafter(finite[1:]), ties.nextafter(finite[:-1]),
                        torch.randn(20000, generator=gen) * 1e4, torch.randn(20000, generator=gen) * 1e-6,
                        torch.tensor([float("inf"), -float("inf"), 1e30, -1e30, 0.0, -0.0])])
    narrowed = torch.empty(values.numel(), dtype=torch.int16)
    _core.gate_float_to_half_bits(values.data_ptr(), narrowed.data_ptr(), values.numel(), code)
    assert torch.equal(narrowed, values.to(dtype).view(torch.int16))
    nan = torch.full((4,), float("nan"))
    _core.gate_float_to_half_bits(nan.data_ptr(), narrowed.data_ptr(), 4, code)
    assert torch.all(narrowed[:4].view(dtype).isnan())


@pytest.mark.skipif(not fused_available("cuda"), reason="no CUDA device or no CUDA kernel in this build")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape,channels_last", [((32, 16, 20, 20), False), ((32, 16, 20, 20), True),
                                                  ((100, 70), False)])
def test_cuda_kernel_matches_eager(dtype, shape, channels_last):
    x, grad = _make(shape, dtype, channels_last)
    x, grad = x.cuda(), grad.cuda()
    c = shape[1]
    z = torch.rand(c, device="cuda")
    importance = torch.ones(c, dtype=torch.float64, device="cuda")
    batches = torch.zeros((), dtype=torch.int64, device="cuda")
    grad_input, g = gate_backward(grad, x, z, importance, batches)
    assert torch.equal(grad_input, grad * z.to(dtype).view([1, c] + [1] * (len(shape) - 2)))
    expected = _oracle_g(grad.cpu(), x.cpu())
    assert torch.allclose(g.cpu(), expected, rtol=1e-4, atol=1e-3)
    assert torch.allclose(importance.cpu(), 1 + expected ** 2, rtol=1e-4, atol=1e-3)
    assert batches.item() == 1
