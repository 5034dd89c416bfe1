"""Data sets as uint8 tensors (CIFAR, TinyImageNet, ImageFolder, digits, synthetic) and batched augmentation.

`names` (the data-set names, torch-free), `arrays` (conversions the readers share, `derive_seed`),
`readers` (one reader per format), `datasets` (`ImageDataset`, `load_dataset`), `augment` (the on-device
batch loader and augmentations).
"""
from pyns.data.names import DATASETS, canonical_name


def __getattr__(name: str):
    # `from pyns.data import load_dataset` (the documented path) without importing torch for
    # `pyns.data.names`, which the command-line parser needs at start-up.
    if name == "load_dataset":
        from pyns.data.datasets import load_dataset  # local: defers torch (see above)

        return load_dataset
    raise AttributeError(f"module 'pyns.data' has no attribute {name!r}")


__all__ = ["DATASETS", "canonical_name", "load_dataset"]
