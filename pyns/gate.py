"""The NeuralScale pruning gate (SPEC §5 "Gate"): y = x * z[c] right after a BatchNorm.

z is a per-channel multiplier (ones, never trained; zeros mask channels). Its gradient is the
first-order Taylor importance signal: with E the batch-mean loss,

    g[c] = dE/dz_c = sum over batch and space of grad_out * x,

and the importance of channel c is g[c]^2 averaged over the minibatches since the last reset.

The backward pass is one fused sweep over the activation (C++ with OpenMP on CPU, a CUDA kernel on GPU
where the package was built with one): it writes grad_input = grad_out * z[c], forms g, adds g^2 into
the float64 `importance` buffer and counts the minibatch, with no temporary the size of the activation.
Eager torch (`gate_backward_reference`) is the fallback for anything else and the test oracle.

A gate that collects nothing (the pruner's, see below) costs nothing: while z is all ones it returns
its input (no multiply, no copy, no backward node), otherwise plain autograd computes grad * z. The
pruner reads dE/dz for gates right after a BN / conv / linear off that layer's parameter gradients
(pyns.neuralscale.prune.producer_taylor: the same quantity, summed in another order) and uses this
module's backward only for the others.

The C++ never sees a tensor (SPEC §2): this module checks shapes, strides and dtypes and passes
`data_ptr()` integers.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from pyns.errors import PynsError

try:  # the source tree without a build still works, on the eager path
    from pyns import _core
except ImportError:  # pragma: no cover - exercised only without a compiled core
    _core = None

__all__ = ["TaylorGate", "GateFunction", "gate_backward", "gate_backward_reference", "fused_available"]

# Codes shared with csrc/gate.cpp and csrc/cuda/gate.cu.
_DTYPE_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_LAYOUT_PLANES = 0  # memory [N][C][HW]: NCHW contiguous, or [N, C, L]
_LAYOUT_ROWS = 1  # memory [N*HW][C]: channels_last / channels_last_3d, or 2-D [N, C]


def fused_available(device: torch.device | str) -> bool:
    """Whether the fused backward kernel serves tensors on `device`."""
    device = torch.device(device)
    if _core is None:
        return False
    if device.type == "cpu":
        return hasattr(_core, "gate_backward_cpu")
    if device.type == "cuda":
        return bool(getattr(_core, "has_cuda", False)) and hasattr(_core, "gate_backward_cuda") \
            and torch.cuda.is_available()
    return False


def _channel_shape(x: torch.Tensor) -> list[int]:
    """Shape that broadcasts a [C] vector over x = [N, C, *spatial]."""
    return [1, x.shape[1]] + [1] * (x.dim() - 2)


def _reduce_dims(x: torch.Tensor) -> list[int]:
    """Every dimension of x except the channel dimension 1."""
    return [d for d in range(x.dim()) if d != 1]


def gate_backward_reference(grad: torch.Tensor, x: torch.Tensor,
                            z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager backward of y = x * z[c]: (grad_input, g) with g = sum of grad * x per channel, float64.

    Products are formed in float32 (float64 for float64 inputs): a product of two bfloat16 or two
    float16 numbers is exact in float32, so half-precision inputs are summed without extra rounding.
    grad_input uses z rounded to the input dtype, exactly as the forward `x * z.to(x.dtype)` does.
    """
    grad_input = grad * z.to(grad.dtype).view(_channel_shape(grad))
    product_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    g = (grad.to(product_dtype) * x.to(product_dtype)).sum(_reduce_dims(x), dtype=torch.float64)
    return grad_input, g


def _dense_in_order(t: torch.Tensor, order: list[int]) -> bool:
    """Whether t is dense, gap-free memory with dims nested as `order` (outermost first).

    Size-1 dims are skipped because their stride is arbitrary (as torch.is_contiguous does).
    """
    expected = 1
    for dim in reversed(order):
        size = t.shape[dim]
        if size != 1 and t.stride(dim) != expected:
            return False
        expected *= size
    return True


def _layout_order(layout: int, ndim: int) -> list[int]:
    if layout == _LAYOUT_PLANES:
        return list(range(ndim))  # N, C, spatial...
    return [0, *range(2, ndim), 1]  # N, spatial..., C


def _layout_of(t: torch.Tensor) -> int | None:
    for layout in (_LAYOUT_PLANES, _LAYOUT_ROWS):
        if _dense_in_order(t, _layout_order(layout, t.dim())):
            return layout
    return None


def _check_buffer(name: str, buf: torch.Tensor, dtype: torch.dtype, numel: int,
                  device: torch.device) -> None:
    if buf.dtype != dtype or buf.numel() != numel or buf.device != device or not buf.is_contiguous():
        raise PynsError(
            f"The gate's {name} buffer must be a contiguous {dtype} tensor of {numel} element(s) on "
            f"{device}, got {buf.dtype} of shape {tuple(buf.shape)} on {buf.device}.")


def _fused_backward(grad: torch.Tensor, x: torch.Tensor, z: torch.Tensor,
                    importance: torch.Tensor | None, batches: torch.Tensor | None,
                    need_grad_input: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    layout = _layout_of(x)
    if layout is None:  # neither NCHW nor channels_last in memory: one copy makes it NCHW
        x = x.contiguous()
        layout = _LAYOUT_PLANES
    if grad.dtype != x.dtype or not _dense_in_order(grad, _layout_order(layout, x.dim())):
        grad = torch.empty_like(x).copy_(grad)  # empty_like keeps x's strides for dense x
    n, c = x.shape[0], x.shape[1]
    hw = math.prod(x.shape[2:])  # 1 for [N, C]
    compute_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    # z rounded to the input dtype first, as the forward multiplies by it.
    z_compute = z.detach().to(device=x.device, dtype=x.dtype).to(compute_dtype).contiguous()
    g = torch.empty(c, dtype=torch.float64, device=x.device)
    grad_input = torch.empty_like(x) if need_grad_input else None
    pointers = (grad.data_ptr(), x.data_ptr(), z_compute.data_ptr(),
                grad_input.data_ptr() if grad_input is not None else 0, g.data_ptr(),
                importance.data_ptr() if importance is not None else 0,
                batches.data_ptr() if batches is not None else 0)
    shape = (n, c, hw, layout, _DTYPE_CODES[x.dtype])
    if x.device.type == "cpu":
        _core.gate_backward_cpu(*pointers, *shape, torch.get_num_threads())
    else:
        with torch.cuda.device(x.device):
            stream = torch.cuda.current_stream(x.device).cuda_stream
            _core.gate_backward_cuda(*pointers, *shape, stream)
    return grad_input, g


def gate_backward(grad: torch.Tensor, x: torch.Tensor, z: torch.Tensor,
                  importance: torch.Tensor | None = None, batches: torch.Tensor | None = None,
                  need_grad_input: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Backward of y = x * z[c] for x = [N, C, *spatial]: returns (grad_input, g), g float64 [C].

    When `importance` (float64 [C]) is given, g^2 is added into it; when `batches` (int64, one
    element) is given, it is incremented. Runs the fused kernel where one serves x's device and dtype,
    eager torch otherwise.
    """
    if x.dim() < 2 or z.numel() != x.shape[1]:
        raise PynsError(f"The gate expects an input [N, C, ...] with C = {z.numel()} channels, got "
                        f"shape {tuple(x.shape)}.")
    if importance is not None:
        _check_buffer("importance", importance, torch.float64, z.numel(), x.device)
    if batches is not None:
        _check_buffer("batches", batches, torch.int64, 1, x.device)
    if x.dtype in _DTYPE_CODES and x.numel() > 0 and fused_available(x.device):
        return _fused_backward(grad, x, z, importance, batches, need_grad_input)
    grad_input, g = gate_backward_reference(grad, x, z)
    if importance is not None:
        importance += g * g
    if batches is not None:
        batches += 1
    return (grad_input if need_grad_input else None), g


class GateFunction(torch.autograd.Function):
    """y = x * z[c]; the backward is `gate_backward` (fused) and feeds the importance buffers.

    importance and batches are bookkeeping, not inputs of the maths: pass None to skip accumulation.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, z: torch.Tensor, importance: torch.Tensor | None,
                batches: torch.Tensor | None, taylor_sum: torch.Tensor | None = None) -> torch.Tensor:
        # x itself is saved: grad * x needs the activation, and the output may be changed in place
        # afterwards (ReLU(inplace=True)).
        ctx.save_for_backward(x, z)
        ctx.importance = importance
        ctx.batches = batches
        ctx.taylor_sum = taylor_sum
        return x * z.to(x.dtype).view(_channel_shape(x))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, z = ctx.saved_tensors
        grad_input, g = gate_backward(grad, x, z, ctx.importance, ctx.batches,
                                      need_grad_input=ctx.needs_input_grad[0])
        if ctx.taylor_sum is not None:
            ctx.taylor_sum += g  # the class's summed dE/dz (pyns.neuralscale.prune.importance)
        grad_z = g.to(z.dtype) if ctx.needs_input_grad[1] else None
        return grad_input, grad_z, None, None, None


class TaylorGate(nn.Module):
    """Per-channel gate z after a BatchNorm that collects first-order Taylor importance.

    Buffers, not parameters (SPEC §3: gates do not count as params): `z` (ones [C], float32),
    `importance` (float64 [C], sum of squared per-minibatch dE/dz) and `batches` (int64 scalar,
    minibatches summed into `importance`). Input [N, C, *spatial] in any float dtype, NCHW or
    channels_last. Set `accumulate = False` to stop collecting (the gradient still flows); a gate
    that collects nothing (accumulate False, neither attribute below set, z not trained) runs as plain
    autograd, and as the identity while z is all ones (what a shrunk network's gates are).
    Two attributes (not buffers; None by default) let the pruner's
    pyns.neuralscale.prune.importance.TaylorCollector pool gates whose channels are removed together:
    `taylor_sum`, a float64 [C] tensor the backward adds each minibatch's dE/dz into, and
    `taylor_squares`, one it adds (dE/dz)^2 into instead of `importance` (the fused kernel's own
    accumulation, into a tensor shared by the class's gates).
    """

    def __init__(self, num_channels: int, accumulate: bool = True, device: torch.device | str | None = None):
        super().__init__()
        if num_channels < 1:
            raise PynsError(f"A gate needs at least 1 channel, got {num_channels}.")
        self.num_channels = num_channels
        self.accumulate = accumulate
        self.register_buffer("z", torch.ones(num_channels, device=device))
        self.register_buffer("importance", torch.zeros(num_channels, dtype=torch.float64, device=device))
        self.register_buffer("batches", torch.zeros((), dtype=torch.int64, device=device))
        self.taylor_sum: torch.Tensor | None = None
        self.taylor_squares: torch.Tensor | None = None
        self._ones_cache: tuple[torch.Tensor, int, bool] | None = None  # (z, its version, all ones)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise PynsError(f"The gate expects an input [N, C, ...] with C = {self.num_channels} "
                            f"channels, got shape {tuple(x.shape)}.")
        training = torch.is_grad_enabled() and (x.requires_grad or self.z.requires_grad)
        if training and (self._collecting() or self.z.requires_grad):
            if self.taylor_squares is not None:
                squares, batches = self.taylor_squares, None  # the collector counts minibatches itself
            else:
                squares = self.importance if self.accumulate else None
                batches = self.batches if self.accumulate else None
            return GateFunction.apply(x, self.z, squares, batches, self.taylor_sum)
        if self.passes_through(x.requires_grad):
            return x
        # Nothing to collect: plain autograd (grad * z), without the fused kernel's dE/dz reduction.
        return x * self.z.to(x.dtype).view(_channel_shape(x))

    def _collecting(self) -> bool:
        return self.accumulate or self.taylor_squares is not None or self.taylor_sum is not None

    def passes_through(self, input_requires_grad: bool) -> bool:
        """Whether forward returns its input itself for an input with this requires_grad: while training
        with nothing to collect and z = 1 (a shrunk network, or any gate before masking), y = x and
        dE/dx = dE/dy exactly, so the gate is skipped: no multiply, no copy of the activation, no backward
        node. (Outside training the product stays, so that traced and exported graphs keep the gate.)"""
        return (torch.is_grad_enabled() and input_requires_grad and not self.z.requires_grad
                and not self._collecting() and self._all_ones())

    def _all_ones(self) -> bool:
        """Whether every z is 1, re-checked (one reduction) only after z was replaced or written to:
        a tensor's version counter moves with every in-place write (masking, load_state_dict)."""
        z = self.z
        try:
            version = z._version
        except RuntimeError:  # an inference tensor has no version counter: do not cache
            return False
        cached = getattr(self, "_ones_cache", None)  # absent on gates unpickled from older versions
        if cached is not None and cached[0] is z and cached[1] == version:
            return cached[2]
        ones = bool(torch.all(z == 1))
        self._ones_cache = (z, version, ones)
        return ones

    def reset_importance(self) -> None:
        """Forget the collected importance (called after every prune step)."""
        self.importance.zero_()
        self.batches.zero_()

    def mean_importance(self) -> torch.Tensor:
        """Importance per channel: the collected sum over the minibatches since the last reset divided
        by their number (float64 [C]; zeros before the first minibatch)."""
        return self.importance / self.batches.clamp(min=1)

    def _apply(self, fn, recurse=True):
        # .half()/.bfloat16() convert every float buffer; the accumulator must stay float64 (squares of
        # small gradients underflow float16), so it only follows the device.
        importance = self.importance
        super()._apply(fn, recurse)
        if self.importance.dtype != torch.float64:
            self.importance = importance.to(device=self.importance.device, dtype=torch.float64)
        return self

    def extra_repr(self) -> str:
        return f"{self.num_channels}, accumulate={self.accumulate}"
