"""Array helpers the data readers share: channel conversion, square resize, stratified hold-out, the
layout-folder check, and `derive_seed` (independent seeds per purpose)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pyns.errors import DataError

__all__ = ["FLOAT_CHUNK", "convert_channels", "derive_seed", "layout_folder", "resize_square",
           "stratified_holdout"]

# Chunk of images converted to float at a time when resizing or computing statistics: bounds the
# temporary float copy (4096 x 3 x 64 x 64 x 4 bytes = 200 MB) on large data sets.
FLOAT_CHUNK = 4096


def derive_seed(seed: int, *stream: int | str) -> int:
    """An independent 63-bit seed for one purpose (`stream`) of a user seed.

    seed + offset schemes make streams collide (seed 1 of one purpose = seed 0 + 1 of another); numpy's
    SeedSequence hashes the whole tuple instead. Strings are hashed stably through their UTF-8 bytes
    (Python's hash() is salted per process).
    """
    words: list[int] = []
    for part in stream:
        words += list(part.encode("utf-8")) + [256] if isinstance(part, str) else [int(part)]
    # Modulo 2**64: SeedSequence wants a non-negative entropy, and a negative user seed is still a seed.
    state = np.random.SeedSequence(int(seed) % 2**64, spawn_key=tuple(words)).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))  # < 2**63: a valid torch manual_seed



def convert_channels(images: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Grey -> colour by repetition; colour -> grey with the ITU-R 601 luma weights (Pillow's "L")."""
    have = images.shape[1]
    if channels is None or channels == have:
        return images
    if have == 1:
        return images.expand(-1, channels, -1, -1).contiguous()
    if have == 3 and channels == 1:
        rgb = images.to(torch.int32)
        # Integer weights per mille, +500 to round: the same formula Pillow uses for convert("L").
        luma = (rgb[:, 0] * 299 + rgb[:, 1] * 587 + rgb[:, 2] * 114 + 500) // 1000
        return luma.to(torch.uint8).unsqueeze(1)
    raise DataError(f"cannot convert {have}-channel images to {channels} channels: use 1 or 3")


def resize_square(images: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """Resize uint8 [N, C, H, W] to [N, C, r, r] with antialiased bilinear interpolation, in chunks."""
    if resolution is None or (images.shape[2] == resolution and images.shape[3] == resolution):
        return images
    out = torch.empty((images.shape[0], images.shape[1], resolution, resolution), dtype=torch.uint8)
    for start in range(0, images.shape[0], FLOAT_CHUNK):
        chunk = images[start:start + FLOAT_CHUNK].float()
        resized = F.interpolate(chunk, size=(resolution, resolution), mode="bilinear", align_corners=False,
                                antialias=True)
        out[start:start + FLOAT_CHUNK] = resized.round().clamp(0, 255).to(torch.uint8)
    return out


def stratified_holdout(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split: returns sorted (train_indices, test_indices).

    Uses numpy's legacy RandomState, whose stream is frozen across numpy versions, so a given seed
    selects the same images everywhere.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rng = np.random.RandomState(seed)
    test_parts = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        chosen = rng.permutation(members)[: int(round(test_fraction * len(members)))]
        test_parts.append(chosen)
    test = np.sort(np.concatenate(test_parts)) if test_parts else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def layout_folder(root: Path | None, folder: str, marker: str, what: str, url: str) -> Path:
    """Accept either the parent of `folder` or `folder` itself; the marker file must exist inside."""
    if root is None:
        raise DataError(f"{what} needs a folder: pass --root DIR, the folder that contains {folder}/ "
                        f"(the layout from {url})")
    for candidate in (root / folder, root):
        if (candidate / marker).is_file():
            return candidate
    raise DataError(f"{what} not found: expected {root / folder / marker} (the layout from {url}); "
                    f"pass --root DIR")
