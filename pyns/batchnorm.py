"""Training-mode BatchNorm2d (and BatchNorm2d + ReLU) for channels-last CPU activations, on the C++ core.

torch's CPU BatchNorm over channels_last tensors vectorises over the channels in whole vectors, and
pruned or scaled networks have the widths it handles worst: on this machine a 64x19x32x32 float32
forward + backward took 12.7 ms against 1.9 ms here (csrc/batchnorm.cpp has the figures).
`RowsBatchNorm2d` is an nn.BatchNorm2d (same parameters, buffers, state dict and eval behaviour) whose
training forward runs `_core.batchnorm_forward_rows` / `batchnorm_backward_rows` wherever the input is
a float32 / float64 CPU tensor in channels_last memory ([N*H*W][C] rows) and the parameters and running
buffers have its dtype; anything else takes nn.BatchNorm2d's own path. Running statistics are updated
as torch does (unbiased variance; momentum, or the cumulative average when momentum is None).

A ReLU that follows it in an nn.Sequential (directly, or behind a pruning gate that is the identity for
the call: pyns.gate.TaylorGate.passes_through) is folded into the same passes: the BN writes
max(y, 0) and its backward zeroes the gradient where y is not > 0, as threshold_backward does (the mask
recomputed from the saved input, bit for bit), so the ReLU's own forward and backward passes over the
activation disappear. The ReLU module stays in place
(a `_FoldedReLU`) and applies itself to any input the BN did not produce this way.

The results equal torch's to float rounding, not bit for bit (the sums run in another order; both
round float32 over short runs). `use_rows_batchnorm(model)` switches a model's layers in place, keeping
every parameter and buffer: the pruner does so after every rebuild (pyns.neuralscale.prune.pruner), and
`rows_batchnorm(model)` does it for the length of a `with` block (pyns.train.loop, with channels_last on
the CPU).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from pyns.gate import TaylorGate

try:  # the source tree without a build still works, on torch's path
    from pyns import _core
except ImportError:  # pragma: no cover - exercised only without a compiled core
    _core = None

__all__ = ["RowsBatchNorm2d", "rows_batchnorm", "rows_kernel_serves", "use_rows_batchnorm"]

_DTYPE_CODES = {torch.float32: 0, torch.float64: 1}  # shared with csrc/batchnorm.cpp
# A flag on the output tensor of a BN that applied the ReLU after it, read by that ReLU.
_RELU_APPLIED = "_pyns_relu_applied"


def rows_kernel_serves(x: torch.Tensor) -> bool:
    """Whether the rows kernel computes BatchNorm2d of `x`: a 4-D float32 / float64 CPU tensor with more
    than one value per channel, dense in channels_last memory (so [N*H*W][C] rows)."""
    return (_core is not None and hasattr(_core, "batchnorm_forward_rows") and x.dim() == 4
            and x.device.type == "cpu" and x.dtype in _DTYPE_CODES and x.numel() > x.shape[1]
            and x.is_contiguous(memory_format=torch.channels_last))


def _pointer(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class _RowsBatchNormFunction(torch.autograd.Function):
    """y = (x - mean) * invstd * weight + bias with the batch's statistics (then max(y, 0) with `relu`);
    updates the running buffers given (factor = the momentum of this update)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, factor: float, eps: float, relu: bool):
        c = x.shape[1]
        rows = x.numel() // c
        y = torch.empty_like(x, memory_format=torch.channels_last)
        saved = torch.empty(2, c, dtype=torch.float64)  # mean, invstd
        mean_ptr = saved.data_ptr()
        invstd_ptr = mean_ptr + c * saved.element_size()
        _core.batchnorm_forward_rows(x.data_ptr(), _pointer(weight), _pointer(bias), y.data_ptr(), mean_ptr,
                                     invstd_ptr, _pointer(running_mean), _pointer(running_var), factor, relu,
                                     rows, c, eps, _DTYPE_CODES[x.dtype], torch.get_num_threads())
        # x itself is saved (as torch's BatchNorm saves its input); a folded ReLU's mask is recomputed from
        # it, so y may be changed in place later like any BN output.
        ctx.save_for_backward(x, weight, bias, saved)
        ctx.relu = relu
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight, bias, saved = ctx.saved_tensors
        c = x.shape[1]
        rows = x.numel() // c
        grad = grad.to(x.dtype).contiguous(memory_format=torch.channels_last)
        want_x, want_w, want_b = ctx.needs_input_grad[:3]
        dx = torch.empty_like(x, memory_format=torch.channels_last) if want_x else None
        grad_weight = torch.empty(c, dtype=x.dtype) if want_w else None
        grad_bias = torch.empty(c, dtype=x.dtype) if want_b else None
        mean_ptr = saved.data_ptr()
        _core.batchnorm_backward_rows(grad.data_ptr(), x.data_ptr(), mean_ptr, mean_ptr + c * saved.element_size(),
                                      _pointer(weight), _pointer(bias), ctx.relu, _pointer(dx),
                                      _pointer(grad_weight), _pointer(grad_bias), rows, c,
                                      _DTYPE_CODES[x.dtype], torch.get_num_threads())
        return dx, grad_weight, grad_bias, None, None, None, None, None


class RowsBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d whose training forward on channels-last CPU tensors runs the C++ rows kernel.

    `_folded` (set by use_rows_batchnorm, not a submodule) is None, or a one-element tuple holding the
    pruning gate between this BN and the ReLU folded into it (None when the ReLU follows directly)."""

    _folded: tuple[TaylorGate | None] | None = None

    def _serves(self, x: torch.Tensor) -> bool:
        if not ((self.training or not self.track_running_stats) and rows_kernel_serves(x)):
            return False
        tensors = (self.weight, self.bias, self.running_mean, self.running_var)
        return all(t is None or (t.dtype == x.dtype and t.device == x.device and t.is_contiguous()) for t in tensors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._serves(x):
            return super().forward(x)
        factor = 0.0
        update = self.training and self.track_running_stats and self.running_mean is not None
        if self.training and self.track_running_stats:
            # As nn.BatchNorm2d: count the batch; momentum None means a cumulative moving average.
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else float(self.momentum)
        relu = False
        if self._folded is not None:
            gate = self._folded[0]
            requires_grad = torch.is_grad_enabled() and (x.requires_grad or any(
                p is not None and p.requires_grad for p in (self.weight, self.bias)))
            relu = gate is None or gate.passes_through(requires_grad)
        y = _RowsBatchNormFunction.apply(x, self.weight, self.bias, self.running_mean if update else None,
                                         self.running_var if update else None, factor, float(self.eps), relu)
        if relu:
            setattr(y, _RELU_APPLIED, True)
        return y


class _FoldedReLU(nn.ReLU):
    """The ReLU after a RowsBatchNorm2d: the identity on the tensor that BN already applied it to."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if getattr(x, _RELU_APPLIED, False):
            return x
        return super().forward(x)


def use_rows_batchnorm(model: nn.Module) -> nn.Module:
    """Switch every plain nn.BatchNorm2d in `model` to RowsBatchNorm2d in place, folding in the nn.ReLU
    that follows it in an nn.Sequential (directly or behind a TaylorGate). Only classes change: the
    parameters, buffers, state dict and the optimizer's parameter list stay. Returns `model`."""
    uses: dict[int, int] = {}
    for _, module in model.named_modules(remove_duplicate=False):
        uses[id(module)] = uses.get(id(module), 0) + 1
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = RowsBatchNorm2d
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.children())
        for index, bn in enumerate(children):
            if not isinstance(bn, RowsBatchNorm2d) or uses[id(bn)] > 1:
                continue  # a BN used twice may feed something else than this ReLU elsewhere
            gate = children[index + 1] if index + 1 < len(children) else None
            if not isinstance(gate, TaylorGate):
                gate = None
            after = index + (2 if gate is not None else 1)
            relu = children[after] if after < len(children) else None
            if type(relu) in (nn.ReLU, _FoldedReLU):
                relu.__class__ = _FoldedReLU
                # Through __dict__: assigning a module attribute would register the gate a second time.
                bn.__dict__["_folded"] = (gate,)
    return model


@contextlib.contextmanager
def rows_batchnorm(model: nn.Module) -> Iterator[nn.Module]:
    """`use_rows_batchnorm(model)` for the duration of the block; on exit the layers it switched are
    plain nn.BatchNorm2d and nn.ReLU again (the training harness hands the caller's module back as it
    came)."""
    switched = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    use_rows_batchnorm(model)
    relus = [m for m in model.modules() if type(m) is _FoldedReLU]
    try:
        yield model
    finally:
        for module in switched:
            module.__class__ = nn.BatchNorm2d
            module.__dict__.pop("_folded", None)
        for module in relus:
            module.__class__ = nn.ReLU
