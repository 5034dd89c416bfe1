"""Batched augmentation and a deterministic, resumable, shardable batch loader.

The whole split sits on the training device as one uint8 tensor; a batch is an index gather followed by
a few whole-batch tensor operations (crop by index arithmetic, flip by `torch.where`, rotation by
`affine_grid`/`grid_sample`, normalisation), so no per-image Python runs in the training loop.

Randomness. Every random number comes from CPU `torch.Generator`s seeded from (seed, purpose, epoch[,
rank]) with `derive_seed`, so a loader's output depends only on its settings and the epoch, not on the
device or on how many epochs ran before in this process:

- the permutation of epoch e is the same on every rank (each rank takes its own disjoint slice);
- the augmentation stream of (epoch e, rank r) is drawn batch by batch in a fixed order.

`state_dict()` records the epoch, the number of batches already handed out in it and the augmentation
generator's state. A loader that loads it yields exactly the batches the original would have yielded
next. A rank that loads another rank's state (DDP checkpoints are usually written by rank 0 only)
cannot use that generator state; it re-derives its own by replaying the random draws of the batches
already consumed (a few small tensors per batch), with the same result.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pyns.data.arrays import derive_seed
from pyns.data.datasets import ImageDataset
from pyns.data.names import DATASETS, canonical_name
from pyns.errors import DataError, RunError

__all__ = [
    "Augment",
    "NO_AUGMENT",
    "AugmentDraw",
    "default_augment",
    "draw_augment",
    "gather_rows",
    "crop_and_flip",
    "random_crop",
    "horizontal_flip",
    "rotate",
    "normalize",
    "apply_augment",
    "BatchLoader",
]


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation: random crop after zero padding, horizontal flip, random rotation."""

    pad: int = 4  # pixels of zero padding before the random crop (0 = no crop)
    flip: bool = True  # flip half of the images left-right
    rotate_degrees: float = 0.0  # rotate by an angle drawn uniformly from [-deg, +deg] (0 = none)

    @property
    def is_identity(self) -> bool:
        return self.pad == 0 and not self.flip and self.rotate_degrees == 0.0


NO_AUGMENT = Augment(pad=0, flip=False, rotate_degrees=0.0)


def default_augment(name: str) -> Augment:
    """The papers' recipes: crop(pad 4) + flip for CIFAR and ImageFolder, plus rotation of up to 20 degrees
    for TinyImageNet; none for digits (a flipped digit is another glyph) and synthetic data."""
    key = canonical_name(name)
    if key in ("cifar10", "cifar100", "imagefolder"):
        return Augment(pad=4, flip=True)
    if key == "tinyimagenet":
        return Augment(pad=4, flip=True, rotate_degrees=20.0)
    if key in ("digits", "synthetic"):
        return NO_AUGMENT
    raise DataError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")


# ----------------------------------------------------------------------------------------------------
# Batched operations (pure functions of their inputs, so tests can fix the random parameters)
# ----------------------------------------------------------------------------------------------------


@dataclass
class AugmentDraw:
    """The random parameters of one batch; None where the augmentation is off."""

    offsets: torch.Tensor | None  # int64 [B, 2]: (row, column) of the crop's top-left in the padded image
    flips: torch.Tensor | None  # bool [B]
    angles: torch.Tensor | None  # float32 [B], degrees, positive = counter-clockwise

    def to(self, device: torch.device) -> AugmentDraw:
        return AugmentDraw(*(None if t is None else t.to(device) for t in (self.offsets, self.flips, self.angles)))


def draw_augment(augment: Augment, batch_size: int, generator: torch.Generator) -> AugmentDraw:
    """Draw one batch's parameters; the order (offsets, flips, angles) is part of the resume contract."""
    offsets = flips = angles = None
    if augment.pad > 0:
        offsets = torch.randint(0, 2 * augment.pad + 1, (batch_size, 2), generator=generator)
    if augment.flip:
        flips = torch.rand(batch_size, generator=generator) < 0.5
    if augment.rotate_degrees != 0.0:
        angles = (torch.rand(batch_size, generator=generator) * 2.0 - 1.0) * augment.rotate_degrees
    return AugmentDraw(offsets, flips, angles)


def gather_rows(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """images[index] for a contiguous uint8 [N, ...] tensor, moving whole rows as 8- or 4-byte words.

    The CPU kernel gathers uint8 one byte at a time (measured 200x slower than gathering the same rows
    as int64); viewing each row as wider words is exact because rows are only moved, never mixed.
    """
    row_bytes = images[0].numel() * images.element_size() if len(images) else 0
    if images.is_contiguous() and images.dtype == torch.uint8 and row_bytes:
        for word in (torch.int64, torch.int32):
            if row_bytes % word.itemsize == 0 and images.storage_offset() % word.itemsize == 0:
                rows = images.view(len(images), -1).view(word)  # [N, row_bytes / word size]
                return rows.index_select(0, index).view(torch.uint8).view(-1, *images.shape[1:])
    return images.index_select(0, index)


def crop_and_flip(images: torch.Tensor, pad: int, offsets: torch.Tensor,
                  flips: torch.Tensor | None = None) -> torch.Tensor:
    """Zero-pad [B, C, H, W] by `pad`, cut an H x W window at each image's offset and mirror it left-right
    where `flips` is True, all in one gather.

    offsets: int64 [B, 2] (row, column) with values in [0, 2*pad]; (pad, pad) keeps the image in place.
    """
    batch, channels, height, width = images.shape
    padded_width = width + 2 * pad
    padded = F.pad(images, (pad, pad, pad, pad)).reshape(batch, channels, -1)  # [B, C, (H+2p)*(W+2p)]
    rows = offsets[:, 0, None] + torch.arange(height, device=images.device)  # [B, H]
    columns = torch.arange(width, device=images.device).expand(batch, width)  # [B, W]
    if flips is not None:
        # Output column j of a mirrored window is its column W-1-j.
        columns = torch.where(flips[:, None], width - 1 - columns, columns)
    columns = columns + offsets[:, 1, None]
    flat = rows[:, :, None] * padded_width + columns[:, None, :]  # [B, H, W] positions in the padded plane
    flat = flat.reshape(batch, 1, height * width).expand(batch, channels, height * width)
    return torch.gather(padded, 2, flat).reshape(batch, channels, height, width)


def random_crop(images: torch.Tensor, pad: int, offsets: torch.Tensor) -> torch.Tensor:
    """Zero-pad [B, C, H, W] by `pad` on every side and cut an H x W window at each image's offset
    (int64 [B, 2], (row, column), values in [0, 2*pad])."""
    return crop_and_flip(images, pad, offsets)


def horizontal_flip(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images whose mask entry is True."""
    return torch.where(mask[:, None, None, None], images.flip(3), images)


def rotate(images: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotate float [B, C, H, W] about the centre, counter-clockwise by `degrees` [B]; corners become 0.

    affine_grid maps output to input coordinates, normalised to [-1, 1] separately along x and y, so the
    off-diagonal terms carry the aspect ratio to keep the rotation rigid in pixels for non-square images.
    """
    if not images.is_floating_point():
        raise TypeError("rotate needs a floating-point tensor (bilinear sampling)")
    _, _, height, width = images.shape
    radians = torch.deg2rad(degrees.to(images.dtype))
    cos, sin = radians.cos(), radians.sin()
    zero = torch.zeros_like(cos)
    # With y pointing down, a visual counter-clockwise turn by a reads the input at R(a) @ output point.
    theta = torch.stack([
        torch.stack([cos, -sin * (height / width), zero], dim=1),
        torch.stack([sin * (width / height), cos, zero], dim=1),
    ], dim=1)  # [B, 2, 3]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(x / 255 - mean) / std in float32; images in 0..255 units (uint8 or float), mean/std [C] or
    broadcastable [1, C, 1, 1] in [0, 1] units."""
    mean = mean.reshape(1, -1, 1, 1).to(device=images.device, dtype=torch.float32)
    std = std.reshape(1, -1, 1, 1).to(device=images.device, dtype=torch.float32)
    return (images.to(torch.float32) / 255.0 - mean) / std


def apply_augment(images: torch.Tensor, augment: Augment, draw: AugmentDraw) -> torch.Tensor:
    """Crop and flip on uint8 (a quarter of the bytes of float), then rotate in float; returns float32
    in 0..255 units, ready for `normalize`. Padding is black before normalisation, as in torchvision."""
    if draw.offsets is not None:
        images = crop_and_flip(images, augment.pad, draw.offsets, draw.flips)
    elif draw.flips is not None:
        images = horizontal_flip(images, draw.flips)
    images = images.to(torch.float32)
    if draw.angles is not None:
        images = rotate(images, draw.angles)
    return images


# ----------------------------------------------------------------------------------------------------
# Loader
# ----------------------------------------------------------------------------------------------------


class BatchLoader:
    """Yields (x float32 normalised [B, C, H, W], y int64 [B]) on `device`, one epoch per iteration.

    train=True shuffles every epoch and applies `augment` (None = no augmentation; pass
    `default_augment(name)` for the papers' recipe). train=False keeps the data set order and never
    augments. With world_size > 1 each rank reads a disjoint slice: for training, a slice of the shared
    permutation (the N mod world_size left-over images change every epoch, so all ranks run the same
    number of batches, which DistributedDataParallel needs); for evaluation, a contiguous block, the
    blocks together covering every image exactly once (block sizes differ by at most one).

    Breaking out of an epoch and iterating again continues that epoch where it stopped; the epoch counter
    advances when the iterator is exhausted (or, if it was abandoned right after the epoch's last batch,
    when the next iteration starts).
    """

    def __init__(self, dataset: ImageDataset, batch_size: int, *, train: bool, augment: Augment | None = None,
                 device: str | torch.device = "cpu", seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank} and world_size {world_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.train = train
        self.augment = augment if train and augment is not None and not augment.is_identity else None
        self.device = torch.device(device)
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        # Moved once: every batch is then a gather on the device (a no-op copy when device is the CPU).
        self.images = dataset.images.to(self.device)
        self.labels = dataset.labels.to(self.device)
        self.mean = torch.tensor(dataset.mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(dataset.std, dtype=torch.float32, device=self.device)

        self._epoch = 0
        self._position = 0  # batches of the current epoch already handed out
        # CPU generator: the same stream on every device, and its state is a portable byte tensor.
        self._generator = torch.Generator()
        self._generator_at: tuple[int, int] | None = None  # (epoch, position) the generator state matches
        self._iterator_token = 0  # the newest iterator; older ones refuse to continue

    # -- size ------------------------------------------------------------------------------------------

    def _shard_size(self) -> int:
        n = len(self.dataset)
        if self.train:
            return n // self.world_size
        return n * (self.rank + 1) // self.world_size - n * self.rank // self.world_size

    def __len__(self) -> int:
        size = self._shard_size()
        return size // self.batch_size if self.drop_last else math.ceil(size / self.batch_size)

    @property
    def epoch(self) -> int:
        return self._epoch

    @epoch.setter
    def epoch(self, value: int) -> None:
        # Jumps to the start of that epoch, like DistributedSampler.set_epoch.
        if value != self._epoch or self._position != 0:
            self._epoch, self._position = int(value), 0

    # -- randomness ------------------------------------------------------------------------------------

    def shard_indices(self, epoch: int | None = None) -> torch.Tensor:
        """Data set indices this rank reads in `epoch` (default: the current one), in reading order."""
        epoch = self._epoch if epoch is None else epoch
        n = len(self.dataset)
        if self.train:
            shuffle = torch.Generator().manual_seed(derive_seed(self.seed, "shuffle", epoch))
            order = torch.randperm(n, generator=shuffle)  # identical on every rank
            per_rank = n // self.world_size
            return order[self.rank * per_rank:(self.rank + 1) * per_rank]
        return torch.arange(n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size)

    def _batch_length(self, index: int) -> int:
        return min(self.batch_size, self._shard_size() - index * self.batch_size)

    def _sync_generator(self) -> None:
        """Bring the augmentation generator to (epoch, position): seed it for the epoch and replay the
        draws of the batches already handed out. Free when it is already there."""
        if self._generator_at == (self._epoch, self._position):
            return
        self._generator.manual_seed(derive_seed(self.seed, "augment", self._epoch, self.rank))
        if self.augment is not None:
            for index in range(self._position):
                draw_augment(self.augment, self._batch_length(index), self._generator)
        self._generator_at = (self._epoch, self._position)

    # -- iteration -------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._iterator_token += 1
        return self._epoch_batches(self._iterator_token)

    def _epoch_batches(self, token: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = len(self)
        if self._position >= batches > 0:
            # The last batch was handed out but the iterator was not run to its end (a loop that broke
            # right after it, or a checkpoint taken there): that epoch is over, start the next.
            self._epoch, self._position = self._epoch + 1, 0
        epoch = self._epoch
        order = self.shard_indices(epoch).to(self.device)
        self._sync_generator()
        while self._position < batches:
            if token != self._iterator_token or epoch != self._epoch:
                raise RuntimeError("this BatchLoader iterator is stale: the loader was iterated again, "
                                   "loaded a state or changed epoch since it was created")
            start = self._position * self.batch_size
            index = order[start:start + self.batch_size]
            images = gather_rows(self.images, index)
            if self.augment is not None:
                draw = draw_augment(self.augment, len(index), self._generator)
                images = apply_augment(images, self.augment, draw.to(self.device))
            x = normalize(images, self.mean, self.std)
            y = self.labels[index]
            # Count the batch before handing it out, so that state_dict() taken after receiving k
            # batches says k.
            self._position += 1
            self._generator_at = (self._epoch, self._position)
            yield x, y
        if token == self._iterator_token and epoch == self._epoch:
            self._epoch, self._position = epoch + 1, 0

    # -- checkpointing ---------------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        augment = self.augment or NO_AUGMENT
        return {
            "seed": self.seed, "world_size": self.world_size, "batch_size": self.batch_size,
            "num_samples": len(self.dataset), "drop_last": self.drop_last, "train": self.train,
            "augment": [augment.pad, augment.flip, float(augment.rotate_degrees)],
        }

    def state_dict(self) -> dict[str, Any]:
        """Plain values and one uint8 tensor: loads with torch.load(weights_only=True)."""
        self._sync_generator()
        return {"epoch": self._epoch, "position": self._position, "rank": self.rank,
                "generator_state": self._generator.get_state(), **self._settings()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mine = self._settings()
        differing = [f"{key} {state.get(key)!r} -> {value!r}" for key, value in mine.items()
                     if state.get(key) != value]
        if differing:
            raise RunError("cannot resume the data loader: its settings changed since the checkpoint ("
                           + "; ".join(differing) + ")")
        position = int(state["position"])
        if not 0 <= position <= len(self):
            raise RunError(f"cannot resume the data loader: position {position} is outside 0..{len(self)}")
        self._epoch, self._position = int(state["epoch"]), position
        self._iterator_token += 1  # any iterator from before the load must not continue
        if int(state["rank"]) == self.rank:
            self._generator.set_state(state["generator_state"])
            self._generator_at = (self._epoch, self._position)
        else:
            self._generator_at = None  # another rank's stream: replay ours lazily
