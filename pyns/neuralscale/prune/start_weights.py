"""Where a pruning run's start network gets its weights when it does not start from a random init.

`weights` may be the torch module an Arch was imported from (or one of the same structure), a model
spec the importer understands (`torchvision:resnet18`, `timm:NAME`, `pkg.module:factory`: the model the
factory builds, with whatever weights it gives it; pyns never asks for pretrained weights itself, so
nothing is downloaded), or a weights file read by pyns.export.weights (a state_dict, a pyns training
checkpoint, a .safetensors file). A file may name the tensors as the original model does (mapped through
the importer's layer map) or as the pyns-built network at its default widths does (a `pyns train` run).

Every way records where the weights came from in config.json (a file by path and sha256), so a resumed
run is checked against the same start.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyns.errors import PynsError, RunError
from pyns.gate import TaylorGate
from pyns.torch_import.layer_map import map_from_text
from pyns.torch_import.weights import load_weights, weighted_layers

__all__ = ["StartWeights", "resolve_start_weights", "load_start_weights"]


@dataclass
class StartWeights:
    source: Any  # an nn.Module, or a state_dict (name -> tensor)
    info: dict[str, Any]  # for config.json


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # 1 MiB blocks: any file size in bounded memory
            digest.update(block)
    return digest.hexdigest()


def _class_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def resolve_start_weights(weights) -> StartWeights:
    """Read a weights file or build a spec's model once, before the run starts."""
    if isinstance(weights, nn.Module):
        return StartWeights(weights, {"module": _class_name(weights)})
    if not isinstance(weights, (str, Path)):
        raise RunError(f"weights must be a torch module, a weights file or a model spec, not a "
                       f"{type(weights).__name__}")
    path = Path(weights)
    if path.is_file():
        from pyns.export.weights import read_weight_file

        read = read_weight_file(path)
        return StartWeights(read.state_dict, {"path": str(path.resolve()), "sha256": _sha256(path),
                                              "kind": read.kind})
    text = str(weights)
    if ":" in text and not path.suffix:
        from pyns.torch_import.zoo import load_model

        model, _ = load_model(text)
        return StartWeights(model, {"spec": text, "module": _class_name(model)})
    raise RunError(f"there is no weights file at {path} (and `{text}` is not a model spec such as "
                   "torchvision:resnet18, timm:NAME or package.module:factory)")


def _gate_free_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A built layer's tensors without those of pruning gates inside it (a squeeze-excite's)."""

    gates = [name + "." for name, m in module.named_modules() if isinstance(m, TaylorGate)]
    return {k: v for k, v in module.state_dict().items() if not any(k.startswith(g) for g in gates)}


@torch.no_grad()
def _copy_built(dst: nn.Module, src: nn.Module) -> None:
    for a, b in zip(weighted_layers(dst), weighted_layers(src), strict=True):
        theirs = _gate_free_state(b)
        for key, tensor in _gate_free_state(a).items():
            tensor.copy_(theirs[key])


def load_start_weights(model: nn.Module, arch, start: StartWeights) -> None:
    """Copy `start` into `model`, the gated default-width build of `arch`; RunError naming the tensor and
    the shapes when they do not fit."""

    source = start.source
    if not isinstance(source, nn.Module):
        # Named as the pyns network names its tensors (a `pyns train` checkpoint): fit it to the plain
        # build exactly, then copy layer by layer (gates shift the module indices of the gated build).
        with torch.random.fork_rng(devices=[]):  # the throwaway build must not move the run's RNG
            plain = arch.build()
        if set(source) == set(plain.state_dict()):
            from pyns.export.weights import fit_state_dict

            fit_state_dict(plain, source, f"the weights in {start.info.get('path')}")
            _copy_built(model, plain)  # copy_ moves each tensor to the model's device
            return
    layers = arch.torch_layers or map_from_text(arch.source.text)
    where = start.info.get("path") or start.info.get("spec") or start.info.get("module")
    try:
        load_weights(model, source, layers)
    except PynsError as err:
        raise RunError(f"the weights from {where} do not fit {arch.name}: {err}") from None
