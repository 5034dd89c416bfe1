"""Image data sets read from the user's disk (or generated) into one uint8 tensor each.

`load_dataset` picks the reader of the named data set (pyns.data.readers: CIFAR-10/100, TinyImageNet,
ImageFolder, scikit-learn's digits, synthetic; nothing is ever downloaded), checks its options and attaches
the normalisation statistics of the training split. The conversions the readers share (channel count,
square resize, stratified hold-out, layout folder) and `derive_seed` are in pyns.data.arrays.

The whole split is decoded once into `ImageDataset.images` (uint8 [N, C, H, W]); augmentation and
normalisation happen later on whole batches on the training device (pyns.data.augment).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pyns.data.arrays import FLOAT_CHUNK
from pyns.data.names import DATASETS, canonical_name
from pyns.data.readers import READER_DEFAULTS, READERS
from pyns.errors import DataError

__all__ = ["ImageDataset", "DATASETS", "load_dataset", "channel_stats"]

# Per-channel statistics of the *training* splits in [0, 1] units (population std over all training
# pixels of a channel). These are the widely published values; using them means a test split can be
# loaded without decoding the training split. They apply at the native channel count; any other channel
# count makes pyns compute the statistics from the converted training split instead.
_PUBLISHED_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
}

@dataclass
class ImageDataset:
    """One split of an image data set, fully in memory."""

    name: str
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    num_classes: int
    mean: tuple[float, ...]  # per channel, [0, 1] units, of the training split
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what the reader had to do, e.g. unreadable images it skipped (told to)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be int64 [{self.images.shape[0]}], got {self.labels.dtype} "
                             f"{tuple(self.labels.shape)}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean/std need {self.channels} values, got {len(self.mean)} and {len(self.std)}")

    @property
    def resolution(self) -> int:
        """Side of the (square) images."""
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ----------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------


def load_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train", *,
                 resolution: int | None = None, channels: int | None = None, **options: Any) -> ImageDataset:
    """Load one split ("train", or "test"/"val") of a data set named in DATASETS.

    `resolution`/`channels` convert the images (None keeps the native size/channel count; ImageFolder
    images of mixed sizes need a resolution). `options` are reader specific:
    digits: test_fraction=0.2, split_seed=0; imagefolder: test_fraction=0.1, split_seed=0 (only for a
    tree without train/ and val|test/ subfolders), workers; tinyimagenet: workers;
    synthetic: num_samples=2048, test_samples=num_samples//4, num_classes=10, seed=0, noise=0.25.
    Every data set accepts mean=/std= to override the normalisation statistics.
    """
    key = canonical_name(name)
    if key not in READERS:
        raise DataError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")
    canonical_split = _canonical_split(split)
    if resolution is not None and resolution < 1:
        raise DataError(f"resolution must be a positive number of pixels, got {resolution}")
    options = dict(options)
    mean_override, std_override = options.pop("mean", None), options.pop("std", None)
    root_path = None if root is None else Path(root).expanduser()

    defaults = READER_DEFAULTS[key]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise DataError(f"unknown option(s) {', '.join(unknown)} for data set {key} (known: {known}; "
                        f"every data set also takes mean= and std=)")
    options = {**defaults, **options}
    read = READERS[key](root_path, canonical_split, resolution, channels, options)
    images, labels, num_classes, class_names = read[:4]
    notes = tuple(read[4]) if len(read) > 4 else ()  # a reader may add notes (ImageFolder's skipped files)
    if mean_override is not None or std_override is not None:
        if mean_override is None or std_override is None:
            raise DataError("pass both mean= and std= to override the normalisation statistics")
        mean, std = tuple(float(v) for v in mean_override), tuple(float(v) for v in std_override)
    else:
        mean, std = _split_stats(key, root_path, canonical_split, resolution, channels, options, images)
    return ImageDataset(key, images, labels, num_classes, mean, std, tuple(class_names), notes)


def _canonical_split(split: str) -> str:
    lowered = split.lower()
    if lowered == "train":
        return "train"
    if lowered in ("test", "val", "valid", "validation"):
        return "test"
    raise DataError(f"unknown split {split!r}: use 'train' or 'test' ('val' is accepted for 'test')")


# ----------------------------------------------------------------------------------------------------
# Normalisation statistics
# ----------------------------------------------------------------------------------------------------

_STATS_CACHE: dict[tuple, tuple[tuple[float, ...], tuple[float, ...]]] = {}


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 [N, C, H, W] images, in [0, 1] units.

    Accumulates sums in float64 chunk by chunk, so 50 000 CIFAR images need no full float copy.
    """
    if images.shape[0] == 0:
        raise DataError("cannot compute normalisation statistics of an empty split")
    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, images.shape[0], FLOAT_CHUNK):
        chunk = images[start:start + FLOAT_CHUNK].to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    # A constant channel (e.g. synthetic data with no noise) would divide by zero when normalising.
    std = var.sqrt().clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


def _split_stats(name: str, root: Path | None, split: str, resolution: int | None, channels: int | None,
                 reader_options: dict[str, Any], images: torch.Tensor) -> tuple[tuple[float, ...], ...]:
    """Statistics of the *training* split matching this load (the test split must not be normalised by
    its own statistics)."""
    if name in _PUBLISHED_STATS and images.shape[1] == 3:
        return _PUBLISHED_STATS[name]
    # `workers` changes speed, not pixels, so it is not part of the key.
    cache_key = (name, None if root is None else str(root.resolve()), resolution, channels,
                 tuple(sorted((k, repr(v)) for k, v in reader_options.items() if k != "workers")))
    if cache_key in _STATS_CACHE:
        return _STATS_CACHE[cache_key]
    if split == "train":
        stats = channel_stats(images)
    else:
        # Statistics come from the training split decoded with the same settings; the cache makes this
        # free when the training split was loaded first, as a training run does.
        train = load_dataset(name, root, "train", resolution=resolution, channels=channels, **reader_options)
        stats = (train.mean, train.std)
    _STATS_CACHE[cache_key] = stats
    return stats
