"""Trace a module with torch.fx, keeping composite layers whole, and record every tensor's shape.

timm registers the modules that tracing must not enter (BatchNormAct2d and its sync/frozen forms,
Conv2dSame, the padding-same pools, ...): traced through, a BatchNormAct2d becomes a functional
batch_norm call and its module, hence its parameters, is lost. The tracer treats those as leaves, as
timm's own feature extractor does.
"""
from __future__ import annotations

import sys

import torch
from torch import fx, nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp, _extract_tensor_metadata

from pyns.errors import PynsError


def _timm_leaves() -> tuple[type, ...]:
    if "timm" not in sys.modules:  # no timm model can exist then; importing timm would cost seconds
        return ()
    try:
        from timm.layers import _fx  # local: timm is optional, and imported only when already loaded
    except Exception:  # noqa: BLE001 - timm absent or broken: plain torch modules only
        return ()
    try:
        return tuple(_fx.get_notrace_modules())
    except Exception:  # noqa: BLE001
        return tuple(getattr(_fx, "_leaf_modules", ()))


_WEIGHTED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm)


class LeafTracer(fx.Tracer):
    def __init__(self, leaves: tuple[type, ...] = (), stack_traces: bool = False):
        super().__init__()
        # Recording stack traces doubles the tracing time, so it is done only to quote the forward()
        # line of an op that cannot be imported (the importer traces again for that message).
        self.record_stack_traces = stack_traces
        self.leaves = leaves or _timm_leaves()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.leaves and isinstance(m, self.leaves):
            return True
        if isinstance(m, _WEIGHTED):
            return True  # e.g. timm's Linear: a subclass of a weighted layer stays one layer

        return super().is_leaf_module(m, qualname)


_PASS_THROUGH = (nn.BatchNorm2d, nn.BatchNorm1d, nn.Identity, nn.Dropout, nn.ReLU, nn.ReLU6, nn.SiLU,
                 nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.GELU, nn.LeakyReLU)


class MetaProp(fx.Interpreter):
    """ShapeProp on the meta device: every tensor's shape without any arithmetic (a real propagation
    at 224x224 costs ten tracings). Weighted layers run with meta copies of their weight shapes; shape
    preserving layers pass their input through. Whatever meta tensors cannot run falls back to ShapeProp."""

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta["tensor_meta"] = _extract_tensor_metadata(result)
        return result

    def fetch_attr(self, target: str):
        value = super().fetch_attr(target)
        return value.to("meta") if isinstance(value, torch.Tensor) else value

    def call_module(self, target, args, kwargs):
        m = self.fetch_attr(target)
        x = args[0] if args else None
        if type(m) is nn.Conv2d and not kwargs and len(args) == 1:
            w = torch.empty(m.weight.shape, device="meta")
            return F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)
        if isinstance(m, nn.Linear) and not kwargs and len(args) == 1:
            return F.linear(x, torch.empty(m.weight.shape, device="meta"))
        if isinstance(m, _PASS_THROUGH) and not kwargs and len(args) == 1:
            return torch.empty_like(x)
        if not any(True for _ in m.parameters()) and not any(True for _ in m.buffers()):
            return m(*args, **kwargs)  # pools and other stateless modules run on meta tensors as they are
        raise RuntimeError(f"no meta rule for {type(m).__name__}")


def trace(model: nn.Module, input_size: tuple[int, ...], stack_traces: bool = False) -> fx.GraphModule:
    """fx graph of `model` in eval mode (dropout and stochastic depth are identities there), with
    `node.meta['tensor_meta']` from one propagation of an input of `input_size` (batch 1) through fake
    tensors: shapes only, no arithmetic, the real parameters untouched."""
    was_training = model.training
    model.eval()
    try:
        tracer = LeafTracer(stack_traces=stack_traces)
        try:
            graph = tracer.trace(model)
        except Exception as err:  # noqa: BLE001 - torch.fx raises many kinds; all mean "not traceable"
            raise PynsError(f"torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {err}",
                            hint="data-dependent control flow in forward() is the usual cause; wrap that "
                                 "part in a module and register it as a leaf") from None
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
        try:
            with torch.no_grad():
                try:
                    MetaProp(gm).run(torch.zeros(1, *input_size, device="meta"))
                except Exception:  # noqa: BLE001 - a layer meta tensors cannot run: real arithmetic
                    ShapeProp(gm).propagate(torch.zeros(1, *input_size))
        except Exception as err:  # noqa: BLE001
            raise PynsError(f"running {type(model).__name__} on a 1x{'x'.join(map(str, input_size))} input "
                            f"failed: {type(err).__name__}: {err}") from None
    finally:
        model.train(was_training)
    return gm
