"""Copy an original module's parameters and buffers into the network pyns built from its import."""
from __future__ import annotations

import torch
from torch import nn

from pyns.errors import PynsError


def _built_layers(built: nn.Module) -> list[nn.Module]:
    return [m for m in built.modules() if getattr(m, "pyns_layer", None) is not None]


def _copy(dst: nn.Module, src: nn.Module, where: str) -> None:
    theirs = src.state_dict()
    for key, tensor in dst.state_dict().items():
        if key not in theirs:
            raise PynsError(f"cannot copy weights into `{where}`: the source module has no `{key}`")
        value = theirs[key]
        if value.shape != tensor.shape:
            raise PynsError(f"cannot copy `{where}.{key}`: shape {tuple(value.shape)} does not fit "
                            f"{tuple(tensor.shape)} (build at the default widths to load weights)")
        tensor.copy_(value)


@torch.no_grad()
def load_weights(built: nn.Module, model: nn.Module, layers=None) -> None:
    """`layers` is the importer's map: one (kind, module path) per counted IR layer, in IR order; None
    (an Arch read back from text) imports `model` again to get it."""
    if layers is None:
        from pyns.torch_import.convert import import_text
        net = built.ir
        layers = import_text(model, (net.in_channels, net.resolution, net.resolution))[1]
    mine = _built_layers(built)
    if len(mine) != len(layers):
        raise PynsError(f"the built network has {len(mine)} weighted layers but the source module maps to "
                        f"{len(layers)}: build at depth 1 and the default widths to load weights")
    for module, (kind, path) in zip(mine, layers):
        if kind == "scale":
            module.gamma.copy_(model.get_parameter(path).reshape(-1))
        elif kind == "se":
            _copy(module.conv_reduce, model.get_submodule(path[0]), path[0])
            _copy(module.conv_expand, model.get_submodule(path[1]), path[1])
        else:
            _copy(module, model.get_submodule(path), path)
