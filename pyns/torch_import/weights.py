"""Copy an original module's parameters and buffers (or its state_dict) into the network pyns built from
its import, by the importer's layer map (pyns.torch_import.layer_map)."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from pyns.errors import PynsError
from pyns.torch_import.convert import import_text


def weighted_layers(built: nn.Module) -> list[nn.Module]:
    # Pruning gates are inserted modules without a `pyns_layer`: they have no source tensors and keep
    # their own initial state.
    return [m for m in built.modules() if getattr(m, "pyns_layer", None) is not None]


def _sub(state: Mapping[str, torch.Tensor], path: str, used: set[str]) -> dict[str, torch.Tensor]:
    prefix = f"{path}." if path else ""
    out = {}
    for key, value in state.items():
        if key.startswith(prefix):
            out[key[len(prefix):]] = value
            used.add(key)
    return out


def _copy(dst: nn.Module, theirs: Mapping[str, torch.Tensor], where: str) -> None:
    for key, tensor in dst.state_dict().items():
        if key not in theirs:
            raise PynsError(f"cannot copy weights into `{where}`: the source has no `{where}.{key}`")
        value = theirs[key]
        if value.shape != tensor.shape:
            raise PynsError(f"cannot copy `{where}.{key}`: shape {tuple(value.shape)} does not fit "
                            f"{tuple(tensor.shape)} (build at the default widths to load weights)")
        tensor.copy_(value)


@torch.no_grad()
def load_weights(built: nn.Module, source: nn.Module | Mapping[str, torch.Tensor], layers=None) -> None:
    """`source` is the original module or its state_dict. `layers` is the importer's map: one (kind, module
    path) per counted IR layer, in IR order; None (an Arch read back from text) imports `source` again to
    get it, which needs the module. A state_dict must be used up: a tensor no layer takes is an error."""
    if layers is None:
        if not isinstance(source, nn.Module):
            raise PynsError("this architecture has no record of the module each layer was imported from "
                            "(no `# pyns-torch-layers:` lines), so a state_dict cannot be mapped onto it; "
                            "pass the model itself, or import it again with `pyns import`")
        net = built.ir
        layers = import_text(source, (net.in_channels, net.resolution, net.resolution))[1]
    state = source.state_dict() if isinstance(source, nn.Module) else source
    used: set[str] = set()
    mine = weighted_layers(built)
    if len(mine) != len(layers):
        raise PynsError(f"the built network has {len(mine)} weighted layers but the source module maps to "
                        f"{len(layers)}: build at depth 1 and the default widths to load weights")
    for module, (kind, path) in zip(mine, layers):
        if kind == "scale":
            if path not in state:
                raise PynsError(f"cannot copy weights: the source has no `{path}`")
            value = state[path].reshape(-1)
            if value.shape != module.gamma.shape:
                raise PynsError(f"cannot copy `{path}`: shape {tuple(state[path].shape)} does not fit "
                                f"{tuple(module.gamma.shape)}")
            module.gamma.copy_(value)
            used.add(path)
        elif kind == "se":
            _copy(module.conv_reduce, _sub(state, path[0], used), path[0])
            _copy(module.conv_expand, _sub(state, path[1], used), path[1])
            if len(path) > 2:  # the BatchNorm on the reduced channels (timm's SEModule with a norm layer)
                _copy(module.bn, _sub(state, path[2], used), path[2])
        else:
            _copy(module, _sub(state, path, used), path)
    if not isinstance(source, nn.Module):
        left = [k for k in state if k not in used]
        if left:
            raise PynsError(f"{len(left)} tensor(s) of the weights belong to no layer of the architecture, "
                            f"first `{left[0]}` ({tuple(state[left[0]].shape)}): they are another model's")
