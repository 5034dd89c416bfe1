"""Real model definitions for the importer tests: torchvision and timm, with random weights (no download).

torchvision's registry wheel is linked against CUDA torch, so its C extension does not load beside the CPU
torch build these machines use, and `import torchvision` fails on `register_fake("torchvision::nms")`.
The model classes are pure Python and need none of those ops: declaring the `torchvision::nms` and
`torchvision::qnms` schemas (torchvision/csrc/ops/nms.cpp) with torch.library before the import makes
them usable. pyns.torch_import.zoo.import_torchvision does exactly that when the plain import fails; the
tests go through it, and skip cleanly where torchvision or timm is not installed.
"""
from __future__ import annotations

import pytest


def torchvision():
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    from pyns.errors import PynsError
    from pyns.torch_import.zoo import import_torchvision
    try:
        return import_torchvision()
    except PynsError as err:
        pytest.skip(str(err))


def timm():
    torchvision()  # timm imports torchvision's transforms
    return pytest.importorskip("timm")


# GoogLeNet's auxiliary classifiers run only in training: their parameters are not on the eval path that
# pyns imports (the importer refuses such a module rather than count it wrong), so it is built without.
OPTIONS = {"googlenet": {"aux_logits": False, "init_weights": True}}


def model(spec: str):
    """`torchvision:NAME` / `timm:NAME` -> module in eval mode with random weights."""
    import torch

    source, name = spec.split(":")
    torch.manual_seed(0)
    if source == "torchvision":
        m = torchvision().models.get_model(name, weights=None, **OPTIONS.get(name, {}))
    else:
        m = timm().create_model(name, pretrained=False)
    return m.eval()
