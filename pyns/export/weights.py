"""Weights in and out of a built pyns network: reading weight files without pickle, and fitting a state_dict
to a module with a message that names the tensor that does not fit and how.

Every file is read without unpickling arbitrary objects: `.safetensors` files with safetensors, anything
else with `torch.load(..., weights_only=True)`. A file may hold a plain state_dict, a pyns training
checkpoint (its "model"), or the common `{"state_dict": ...}` / `{"model": ...}` wrappers.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pyns.errors import ExportError

__all__ = ["WeightFile", "read_weight_file", "fit_state_dict", "state_dict_differences"]

_TRAIN_FORMAT = "pyns-train-checkpoint"  # pyns.train.checkpoint's payload name
_PRUNE_FORMAT = "pyns-prune-checkpoint"  # pyns.neuralscale.prune.state's
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")  # where other tools keep the weights
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel's and torch.compile's name prefixes


@dataclass
class WeightFile:
    state_dict: dict[str, torch.Tensor]
    kind: str  # "safetensors", "state_dict", "pyns-train-checkpoint", or "checkpoint[KEY]"
    epoch: int | None = None  # a training checkpoint's epoch
    payload: dict[str, Any] | None = None  # a training checkpoint's full content (history, recipe)


def _tensors_only(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def read_weight_file(path: str | Path) -> WeightFile:
    """The state_dict in `path` (see the module doc); ExportError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"there is no weights file at {path}")
    if path.suffix == ".safetensors":
        # local: defers safetensors to the files that need it
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return WeightFile(load_file(str(path), device="cpu"), "safetensors")
        except (SafetensorError, OSError, ValueError) as err:
            raise ExportError(f"{path} could not be read as a safetensors file ({err})") from None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged, foreign or pickled-object files
        raise ExportError(f"{path} could not be read as weights without unpickling code ({err})",
                          hint="pyns reads weights with torch.load(weights_only=True); save a state_dict "
                               "(`torch.save(model.state_dict(), path)`) rather than a whole module") from None
    if isinstance(payload, Mapping) and payload.get("format") == _PRUNE_FORMAT:
        raise ExportError(f"{path} is a pruning checkpoint; its network changes width as it prunes",
                          hint="export the pruning run folder itself: pyns export RUN_DIR [--step N]")
    if isinstance(payload, Mapping) and payload.get("format") == _TRAIN_FORMAT:
        if not _tensors_only(payload.get("model")):
            raise ExportError(f"{path} is a pyns training checkpoint without model weights; it is damaged")
        return WeightFile(dict(payload["model"]), _TRAIN_FORMAT, int(payload.get("epoch", 0)) or None,
                          dict(payload))
    if _tensors_only(payload):
        return WeightFile(dict(payload), "state_dict")
    if isinstance(payload, Mapping):
        for key in _WRAPPER_KEYS:
            if _tensors_only(payload.get(key)):
                return WeightFile(dict(payload[key]), f"checkpoint[{key}]")
    raise ExportError(f"{path} holds no state_dict (a mapping of names to tensors, or one under "
                      f"{', '.join(repr(k) for k in _WRAPPER_KEYS)})")


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(d) for d in t.shape) or "scalar"


def _layer_of(model: nn.Module, key: str) -> str:
    """` (conv `name`)` for a tensor of a module built from an IR layer, else ""."""
    module_path = key.rpartition(".")[0]
    try:
        module = model.get_submodule(module_path)
    except AttributeError:
        return ""
    layer = getattr(module, "pyns_layer", None)
    if layer is None:
        return ""
    kind = type(module).__name__
    return f" ({kind} `{getattr(layer, 'name', '?')}`)"


def state_dict_differences(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *,
                           exact_dtype: bool = False) -> list[str]:
    """One line per tensor that is missing, unexpected or of another shape than `model` needs (or, with
    `exact_dtype`, of another dtype; otherwise only float vs integer counts)."""
    expected = model.state_dict()
    lines: list[str] = []
    for key, tensor in expected.items():
        if key not in state_dict:
            lines.append(f"tensor `{key}`{_layer_of(model, key)} is missing (the arch needs {_shape(tensor)})")
            continue
        given = state_dict[key]
        if not isinstance(given, torch.Tensor):
            lines.append(f"`{key}` is a {type(given).__name__}, not a tensor")
        elif tuple(given.shape) != tuple(tensor.shape):
            lines.append(f"tensor `{key}`{_layer_of(model, key)} has shape {_shape(given)} in the weights but "
                         f"the arch needs {_shape(tensor)}")
        elif given.dtype.is_floating_point != tensor.dtype.is_floating_point or (
                exact_dtype and given.dtype != tensor.dtype):
            lines.append(f"tensor `{key}` is {given.dtype} in the weights, the arch needs {tensor.dtype}")
    for key in state_dict:
        if key not in expected:
            lines.append(f"tensor `{key}` ({_shape(state_dict[key])}) is in the weights but not in the arch")
    return lines


def fit_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str, *,
                   assign: bool = False) -> None:
    """Load `state_dict` into `model` exactly (every tensor, same shapes), or ExportError listing what differs.

    `assign=True` adopts the tensors themselves (for a module built on the meta device), so their dtypes
    must match exactly; otherwise load_state_dict converts them (a float16 checkpoint into float32).
    """
    differences = state_dict_differences(model, state_dict, exact_dtype=assign)
    if differences:
        shown = differences[:8]  # the first few say what is wrong; hundreds of lines would bury it
        more = f"; and {len(differences) - len(shown)} more" if len(differences) > len(shown) else ""
        wrapped = [p for p in _WRAPPER_PREFIXES if state_dict and all(k.startswith(p) for k in state_dict)]
        hint = (f"every name starts with `{wrapped[0]}` (saved from a wrapped model): save the inner module's "
                "state_dict" if wrapped else
                "the widths, depth, resolution or --set values differ from the network these weights were trained as")
        raise ExportError(f"{what} do not fit the architecture: " + "; ".join(shown) + more, hint=hint)
    model.load_state_dict(dict(state_dict), strict=True, assign=assign)
