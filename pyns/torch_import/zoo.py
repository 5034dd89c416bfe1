"""Resolve a model spec (`torchvision:resnet50`, `timm:efficientnet_b0`, `pkg.module:factory`) to a module.

Every model is built with random weights: nothing is downloaded.
"""
from __future__ import annotations

import importlib
import sys

import torch

from pyns.dsl.declarations import suggest
from pyns.errors import PynsError


def import_torchvision():
    """`import torchvision`, working around a C extension that cannot load beside this torch build.

    A torchvision wheel linked against another torch build (e.g. CUDA torch when the CPU build is
    installed) fails at import on `register_fake("torchvision::nms")`, because its C extension, which
    defines that operator, did not load. The model definitions are pure Python and need none of the C
    ops, so when (and only when) the plain import fails that way, the two operator schemas are declared
    with torch.library and the import is retried.
    """
    try:
        import torchvision  # local: torchvision is optional (and this import may have to be retried)
        return torchvision
    except (RuntimeError, ImportError) as err:
        if "torchvision::" not in str(err) and "nms" not in str(err):
            raise PynsError(f"cannot import torchvision: {err}") from None
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]  # the half-initialised package from the failed attempt
    schema = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"  # torchvision/csrc/ops/nms.cpp
    for op in ("nms", "qnms"):
        if not hasattr(torch.ops.torchvision, op) or not _has_op(f"torchvision::{op}"):
            torch.library.define(f"torchvision::{op}", schema)
    try:
        import torchvision  # local: the retry, once the operator schemas exist
    except Exception as err:  # noqa: BLE001 - any failure here is the user's environment
        raise PynsError(f"cannot import torchvision: {err}") from None
    return torchvision


def _has_op(qualname: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(qualname, "")
        return True
    except RuntimeError:
        return False


def load_model(spec: str):
    """-> (nn.Module in eval mode, a short name for the network)."""
    if ":" not in spec:
        raise PynsError(f"model spec `{spec}` must be torchvision:NAME, timm:NAME or package.module:factory")
    source, name = spec.split(":", 1)
    if not name:
        raise PynsError(f"model spec `{spec}` names no model")
    if source == "torchvision":
        tv = import_torchvision()
        try:
            model = tv.models.get_model(name, weights=None)
        except (ValueError, KeyError):
            raise PynsError(f"torchvision has no classification model `{name}`"
                            + suggest(name, tv.models.list_models(module=tv.models))) from None
    elif source == "timm":
        try:
            import_torchvision()  # timm imports torchvision's transforms
        except PynsError:
            pass
        try:
            import timm  # local: timm is optional
        except ImportError as err:
            raise PynsError(f"cannot import timm: {err}") from None
        try:
            model = timm.create_model(name, pretrained=False)
        except RuntimeError as err:
            raise PynsError(f"timm cannot create `{name}`: {err}") from None
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as err:
            raise PynsError(f"cannot import `{source}`: {err}") from None
        factory = getattr(module, name, None)
        if factory is None or not callable(factory):
            raise PynsError(f"`{source}` has no callable `{name}`")
        model = factory()
    if not isinstance(model, torch.nn.Module):
        raise PynsError(f"`{spec}` gave a {type(model).__name__}, not a torch.nn.Module")
    return model.eval(), name.replace(".", "_")
