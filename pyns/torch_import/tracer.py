"""Trace a module with torch.fx, keeping composite layers whole, and record every tensor's shape.

timm registers the modules that tracing must not enter (BatchNormAct2d and its sync/frozen forms,
Conv2dSame, the padding-same pools, ...): traced through, a BatchNormAct2d becomes a functional
batch_norm call and its module, hence its parameters, is lost. The tracer treats those as leaves, as
timm's own feature extractor does.
"""
from __future__ import annotations

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from pyns.errors import PynsError


def _timm_leaves() -> tuple[type, ...]:
    try:
        from timm.layers import _fx
    except Exception:  # noqa: BLE001 - timm absent or broken: plain torch modules only
        return ()
    try:
        return tuple(_fx.get_notrace_modules())
    except Exception:  # noqa: BLE001
        return tuple(getattr(_fx, "_leaf_modules", ()))


_WEIGHTED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d)


class LeafTracer(fx.Tracer):
    def __init__(self, leaves: tuple[type, ...] = ()):
        super().__init__()
        self.record_stack_traces = True  # lets an unsupported op's error quote the forward() line
        self.leaves = leaves or _timm_leaves()

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.leaves and isinstance(m, self.leaves):
            return True
        if isinstance(m, _WEIGHTED):
            return True  # e.g. timm's Linear: a subclass of a weighted layer stays one layer

        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module, input_size: tuple[int, ...]) -> fx.GraphModule:
    """fx graph of `model` in eval mode (dropout and stochastic depth are identities there), with
    `node.meta['tensor_meta']` from one propagation of a zero input of `input_size` (batch 1)."""
    was_training = model.training
    model.eval()
    try:
        tracer = LeafTracer()
        try:
            graph = tracer.trace(model)
        except Exception as err:  # noqa: BLE001 - torch.fx raises many kinds; all mean "not traceable"
            raise PynsError(f"torch.fx cannot trace {type(model).__name__}: {type(err).__name__}: {err}",
                            hint="data-dependent control flow in forward() is the usual cause; wrap that "
                                 "part in a module and register it as a leaf") from None
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
        example = torch.zeros(1, *input_size)
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(example)
        except Exception as err:  # noqa: BLE001
            raise PynsError(f"running {type(model).__name__} on a 1x{'x'.join(map(str, input_size))} input "
                            f"failed: {type(err).__name__}: {err}") from None
    finally:
        model.train(was_training)
    return gm
