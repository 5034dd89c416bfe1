"""The data sets pyns reads and the one spelling rule for their names (torch-free: the CLI parser uses it)."""
from __future__ import annotations

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "tinyimagenet", "imagefolder", "digits", "synthetic")


# Data sets that need no folder: digits ships with scikit-learn, synthetic is generated from a seed.
BUILT_IN: tuple[str, ...] = ("digits", "synthetic")


def canonical_name(name: str) -> str:
    """Case, `-` and `_` do not matter in a data-set name: Tiny-ImageNet, tiny_imagenet = tinyimagenet."""
    return name.lower().replace("-", "").replace("_", "")


__all__ = ["DATASETS", "BUILT_IN", "canonical_name"]
