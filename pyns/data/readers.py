"""The per-format readers behind `pyns.data.datasets.load_dataset`: one on-disk layout (or generator) each.

Nothing is ever downloaded. Each reader knows one on-disk layout:

- CIFAR-10   `cifar-10-batches-py/`  data_batch_1..5, test_batch, batches.meta (python pickles)
- CIFAR-100  `cifar-100-python/`     train, test, meta (python pickles; the 100 *fine* labels are used)
- TinyImageNet `tiny-imagenet-200/`  wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG and
  val/val_annotations.txt (the unlabelled test/ folder is never used: "test" means the labelled val set)
- ImageFolder  root/<class>/<image>, or root/train/<class>/... and root/val|test/<class>/...
- digits       scikit-learn's bundled 8x8 digits (no root)
- synthetic    seeded random class-dependent images (no root)

For the three named layouts `root` may be the parent folder or the layout folder itself. Every problem
with the files on disk becomes one `DataError` that names the file that was expected.

A reader is called as `READERS[name](root, split, resolution, channels, options)` and returns (uint8 images
[N, C, H, W] already converted to `resolution` and `channels`, int64 labels [N], number of classes, class
names); `READER_DEFAULTS[name]` are the options it understands.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pyns.data.arrays import FLOAT_CHUNK, convert_channels, derive_seed, layout_folder, resize_square, stratified_holdout
from pyns.errors import DataError

__all__ = ["READERS", "READER_DEFAULTS", "CIFAR_URL", "TINYIMAGENET_URL"]

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"

_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})


# ----------------------------------------------------------------------------------------------------
# CIFAR (python pickles)
# ----------------------------------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a CIFAR file from an untrusted source cannot
    run code when loaded (plain pickle.load would import and call anything it names)."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, "latin1"): a pure conversion.
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR file never does")
        # numpy 2 renamed numpy.core to numpy._core; files written by either must load under both.
        numpy_2 = int(np.__version__.split(".")[0]) >= 2
        if numpy_2 and module.startswith("numpy.core"):
            module = "numpy._core" + module[len("numpy.core"):]
        elif not numpy_2 and module.startswith("numpy._core"):
            module = "numpy.core" + module[len("numpy._core"):]
        return super().find_class(module, name)


def _read_pickle(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{what} file missing: expected {path} (the python-pickle layout from {CIFAR_URL})")
    try:
        with path.open("rb") as handle:
            # The original files were written by Python 2: their keys are bytes.
            content = _NumpyOnlyUnpickler(handle, encoding="bytes").load()
    except Exception as err:  # any unpickling failure means "not a CIFAR file"; the reason is kept
        raise DataError(f"{what} file {path} is not a CIFAR python-pickle file ({err})") from err
    if not isinstance(content, dict):
        raise DataError(f"{what} file {path} is not a CIFAR python-pickle file (expected a dict, "
                        f"found {type(content).__name__})")
    return {(k.decode("latin-1") if isinstance(k, bytes) else str(k)): v for k, v in content.items()}


def _cifar_batch(path: Path, what: str, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    content = _read_pickle(path, what)
    data, labels = content.get("data"), content.get(label_key)
    if data is None or labels is None:
        raise DataError(f"{what} file {path} lacks the 'data' and '{label_key}' entries of a CIFAR batch")
    try:
        data = np.asarray(data)
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as err:
        raise DataError(f"{what} file {path} has unreadable 'data'/'{label_key}' entries ({err})") from err
    # 3072 = 3 channels x 32 x 32, stored channel-major then row-major.
    well_formed = data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3 * 32 * 32
    if not well_formed or labels.shape != (data.shape[0],):
        raise DataError(f"{what} file {path} has data {data.dtype} {data.shape} and {labels.shape[0]} labels; "
                        f"expected uint8 [N, 3072] and N labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{what} file {path} has labels outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def _label_names(path: Path, key: str) -> list[str]:
    """Class names from the meta file; optional (training does not need them), so a problem is ignored."""
    try:
        names = _read_pickle(path, "meta").get(key, [])
        return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    except DataError:
        return []


def _read_cifar10(root: Path | None, split: str, resolution: int | None, channels: int | None,
                  options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int, list[str]]:
    folder = layout_folder(root, "cifar-10-batches-py", "data_batch_1", "CIFAR-10", CIFAR_URL)
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [_cifar_batch(folder / f, "CIFAR-10", "labels", 10) for f in files]
    return _finish_arrays(parts, resolution, channels, 10, _label_names(folder / "batches.meta", "label_names"))


def _read_cifar100(root: Path | None, split: str, resolution: int | None, channels: int | None,
                   options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int, list[str]]:
    folder = layout_folder(root, "cifar-100-python", "train", "CIFAR-100", CIFAR_URL)
    file = "train" if split == "train" else "test"
    parts = [_cifar_batch(folder / file, "CIFAR-100", "fine_labels", 100)]
    return _finish_arrays(parts, resolution, channels, 100, _label_names(folder / "meta", "fine_label_names"))


def _finish_arrays(parts: Sequence[tuple[np.ndarray, np.ndarray]], resolution: int | None, channels: int | None,
                   num_classes: int, names: list[str]) -> tuple[torch.Tensor, torch.Tensor, int, list[str]]:
    images = torch.from_numpy(np.ascontiguousarray(np.concatenate([p[0] for p in parts])))
    labels = torch.from_numpy(np.concatenate([p[1] for p in parts]))
    images = resize_square(convert_channels(images, channels), resolution)
    return images, labels, num_classes, names


# ----------------------------------------------------------------------------------------------------
# Image files (TinyImageNet, ImageFolder)
# ----------------------------------------------------------------------------------------------------


def _pil_mode(channels: int | None) -> str:
    if channels in (None, 3):
        return "RGB"
    if channels == 1:
        return "L"
    raise DataError(f"image files can be read with 1 or 3 channels, not {channels}")


def _decode_file(path: Path, mode: str, resolution: int | None) -> np.ndarray:
    """One image as uint8 [H, W, C]: converted to `mode`; with a resolution, the shorter side is resized
    to it and the centre square cropped (keeps the aspect ratio, unlike a plain resize)."""
    from PIL import Image  # local: defers PIL to the readers of image files

    try:
        with Image.open(path) as opened:
            image = opened.convert(mode)
        if resolution is not None and image.size != (resolution, resolution):
            width, height = image.size
            scale = resolution / min(width, height)
            new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
            if new_size != image.size:
                # Pillow's bilinear filter widens its support when shrinking, i.e. it antialiases.
                image = image.resize(new_size, Image.Resampling.BILINEAR)
            left, top = (new_size[0] - resolution) // 2, (new_size[1] - resolution) // 2
            image = image.crop((left, top, left + resolution, top + resolution))
        array = np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err
    return array[:, :, None] if array.ndim == 2 else array


def _readable(paths: Sequence[Path], mode: str, resolution: int | None,
              workers: int | None) -> tuple[list[int], list[str]]:
    """(indices of the files that decode, 'path: reason' of those that do not): the skip_unreadable pass."""
    def check(index: int) -> str | None:
        try:
            _decode_file(paths[index], mode, resolution)
        except DataError as err:
            return str(err).removeprefix("cannot read image ")
        return None

    with ThreadPoolExecutor(max_workers=workers or min(32, os.cpu_count() or 1)) as pool:
        problems = list(pool.map(check, range(len(paths))))
    return [i for i, p in enumerate(problems) if p is None], [p for p in problems if p is not None]


def _decode_files(paths: Sequence[Path], channels: int | None, resolution: int | None, workers: int | None,
                  what: str) -> torch.Tensor:
    """Decode many files in parallel into uint8 [N, C, H, W]; all must end up the same size."""
    mode = _pil_mode(channels)
    if not paths:
        raise DataError(f"{what}: no images found")
    first = _decode_file(paths[0], mode, resolution)
    if first.shape[0] != first.shape[1]:
        raise DataError(f"{what}: image {paths[0]} is {first.shape[1]}x{first.shape[0]}, not square; "
                        f"pass a resolution (--resolution N) to resize and centre-crop")
    out = np.empty((len(paths),) + first.shape, dtype=np.uint8)  # [N, H, W, C]
    out[0] = first

    def decode_into(index: int) -> None:
        array = _decode_file(paths[index], mode, resolution)
        if array.shape != first.shape:
            raise DataError(f"{what}: image {paths[index]} is {array.shape[1]}x{array.shape[0]} but "
                            f"{paths[0]} is {first.shape[1]}x{first.shape[0]}; pass a resolution "
                            f"(--resolution N) to resize them all")
        out[index] = array

    # Pillow releases the GIL while decoding, so threads give a real speed-up without pickling arrays.
    with ThreadPoolExecutor(max_workers=workers or min(32, os.cpu_count() or 1)) as pool:
        for _ in pool.map(decode_into, range(1, len(paths))):
            pass
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # [N, H, W, C] -> [N, C, H, W]


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)


def _read_tinyimagenet(root: Path | None, split: str, resolution: int | None, channels: int | None,
                       options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int, list[str]]:
    folder = layout_folder(root, "tiny-imagenet-200", "wnids.txt", "TinyImageNet", TINYIMAGENET_URL)
    wnids = sorted({line.strip() for line in (folder / "wnids.txt").read_text().splitlines() if line.strip()})
    if not wnids:
        raise DataError(f"TinyImageNet file {folder / 'wnids.txt'} lists no classes (expected one wnid a line)")
    index_of = {wnid: i for i, wnid in enumerate(wnids)}
    paths: list[Path] = []
    labels: list[int] = []
    if split == "train":
        for wnid in wnids:
            class_dir = folder / "train" / wnid / "images"
            if not class_dir.is_dir():
                raise DataError(f"TinyImageNet training folder missing: expected {class_dir} "
                                f"(the layout from {TINYIMAGENET_URL})")
            files = _image_files(class_dir)
            paths += files
            labels += [index_of[wnid]] * len(files)
    else:
        annotations = folder / "val" / "val_annotations.txt"
        if not annotations.is_file():
            raise DataError(f"TinyImageNet validation labels missing: expected {annotations} "
                            f"(the layout from {TINYIMAGENET_URL})")
        for number, line in enumerate(annotations.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")  # file name, wnid, then the bounding box (unused)
            if len(fields) < 2 or fields[1] not in index_of:
                raise DataError(f"{annotations}:{number}: expected 'FILE<TAB>WNID<TAB>...' with a wnid from "
                                f"wnids.txt, found {line.strip()!r}")
            image = folder / "val" / "images" / fields[0]
            if not image.is_file():
                raise DataError(f"TinyImageNet validation image missing: expected {image} "
                                f"(listed in {annotations}:{number})")
            paths.append(image)
            labels.append(index_of[fields[1]])
    images = _decode_files(paths, channels, None, options["workers"], f"TinyImageNet {split} ({folder})")
    images = resize_square(images, resolution)
    return images, torch.tensor(labels, dtype=torch.int64), len(wnids), wnids


def _class_folders(tree: Path) -> list[str]:
    return sorted(p.name for p in tree.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_imagefolder(root: Path | None, split: str, resolution: int | None, channels: int | None,
                      options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int, list[str]]:
    if root is None or not root.is_dir():
        raise DataError(f"ImageFolder not found: expected a folder {root if root is not None else 'ROOT'}/"
                        f"<class>/<image> (or ROOT/train/<class>/... and ROOT/val/<class>/...); pass --root DIR")
    has_split_dirs = (root / "train").is_dir()
    train_tree = root / "train" if has_split_dirs else root
    classes = _class_folders(train_tree)
    if not classes:
        raise DataError(f"ImageFolder {train_tree} has no class folders: expected {train_tree}/<class>/<image>")
    index_of = {name: i for i, name in enumerate(classes)}

    if not has_split_dirs or split == "train":
        tree = train_tree
    else:
        tree = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
        if tree is None:
            raise DataError(f"ImageFolder test split not found: expected {root / 'val'}/<class>/<image> (or "
                            f"{root / 'test'}/...) beside {train_tree}")
    paths: list[Path] = []
    labels: list[int] = []
    for name in _class_folders(tree):
        if name not in index_of:
            raise DataError(f"ImageFolder class {tree / name} has no training folder {train_tree / name}; "
                            f"the test classes must be a subset of the training classes")
        files = _image_files(tree / name)
        paths += files
        labels += [index_of[name]] * len(files)
    if not paths:
        raise DataError(f"ImageFolder {tree} holds no images: expected {tree}/<class>/<image> "
                        f"with suffixes {', '.join(sorted(_IMAGE_SUFFIXES))}")
    label_array = np.asarray(labels, dtype=np.int64)
    if not has_split_dirs:
        # A single tree: hold out a deterministic stratified part as the test split.
        train_idx, test_idx = stratified_holdout(label_array, float(options["test_fraction"]),
                                                 int(options["split_seed"]))
        chosen = train_idx if split == "train" else test_idx
        if len(chosen) == 0:
            raise DataError(f"ImageFolder {root}: the {split} split is empty (test_fraction="
                            f"{options['test_fraction']})")
        paths = [paths[i] for i in chosen]
        label_array = label_array[chosen]
    notes: list[str] = []
    if options["skip_unreadable"]:
        # A first pass finds the files that do not decode (a second decode of the good ones is the price
        # of keeping the normal path strict and simple); the split is fixed before, so skipping one file
        # never moves another between train and test.
        keep, problems = _readable(paths, _pil_mode(channels), resolution, options["workers"])
        if problems:
            shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
            notes.append(f"ImageFolder {tree}: skipped {len(problems)} unreadable image(s) of {len(paths)} "
                         f"(skip_unreadable=1): {shown}")
            paths = [paths[i] for i in keep]
            label_array = label_array[keep]
    images = _decode_files(paths, channels, resolution, options["workers"], f"ImageFolder {tree}")
    return images, torch.from_numpy(label_array), len(classes), classes, notes


# ----------------------------------------------------------------------------------------------------
# Bundled and generated data
# ----------------------------------------------------------------------------------------------------


def _read_digits(root: Path | None, split: str, resolution: int | None, channels: int | None,
                 options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int, list[str]]:
    from sklearn.datasets import load_digits  # local: defers sklearn to the digits data set

    bunch = load_digits()
    values = bunch.images.astype(np.int64)  # [1797, 8, 8], integers 0..16
    # 0..16 -> 0..255 with rounding half up: 16 -> 255, 8 -> 128.
    pixels = ((values * 255 + 8) // 16).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = stratified_holdout(labels, float(options["test_fraction"]), int(options["split_seed"]))
    chosen = train_idx if split == "train" else test_idx
    if len(chosen) == 0:
        raise DataError(f"digits: the {split} split is empty (test_fraction={options['test_fraction']})")
    images = torch.from_numpy(pixels[chosen]).unsqueeze(1)  # [N, 8, 8] -> [N, 1, 8, 8]
    images = _upsample_and_pad(convert_channels(images, channels), resolution)
    return images, torch.from_numpy(labels[chosen]), 10, [str(d) for d in range(10)]


def _upsample_and_pad(images: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """Grow small images by the largest whole factor (nearest neighbour: keeps the strokes crisp), then
    zero-pad symmetrically (the odd pixel goes bottom/right) to exactly `resolution`."""
    side = images.shape[-1]
    if resolution is None or resolution == side:
        return images
    if resolution < side:
        return resize_square(images, resolution)
    factor = resolution // side
    grown = images.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)
    before = (resolution - side * factor) // 2
    after = resolution - side * factor - before
    return F.pad(grown, (before, after, before, after))


def _read_synthetic(root: Path | None, split: str, resolution: int | None, channels: int | None,
                    options: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, int, list[str]]:
    """Class prototypes (smooth random patterns shared by both splits) plus per-image Gaussian noise.

    Smooth prototypes make the classes separable by a small CNN in a few epochs while the noise keeps
    single pixels uninformative; the splits draw their noise and labels from different seeds.
    """
    num_classes, seed, noise = int(options["num_classes"]), int(options["seed"]), float(options["noise"])
    if split == "train":
        count = int(options["num_samples"])
    elif options["test_samples"] is not None:
        count = int(options["test_samples"])
    else:
        count = max(1, int(options["num_samples"]) // 4)  # a quarter: the usual 80/20 train/test ratio
    if num_classes < 1 or count < 1:
        raise DataError(f"synthetic data needs num_classes >= 1 and samples >= 1, got {num_classes} and {count}")
    side = 32 if resolution is None else resolution
    depth = 3 if channels is None else channels
    # 4x4 random grids, bilinearly enlarged: low-frequency patterns (4 = coarse enough to survive noise).
    prototype_gen = torch.Generator().manual_seed(derive_seed(seed, "synthetic-prototypes"))
    coarse = torch.rand((num_classes, depth, 4, 4), generator=prototype_gen)
    prototypes = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)

    sample_gen = torch.Generator().manual_seed(derive_seed(seed, f"synthetic-{split}"))
    labels = torch.arange(count) % num_classes  # balanced classes
    labels = labels[torch.randperm(count, generator=sample_gen)]
    images = torch.empty((count, depth, side, side), dtype=torch.uint8)
    for start in range(0, count, FLOAT_CHUNK):
        chunk_labels = labels[start:start + FLOAT_CHUNK]
        chunk = prototypes[chunk_labels] + noise * torch.randn(
            (len(chunk_labels), depth, side, side), generator=sample_gen)
        images[start:start + FLOAT_CHUNK] = (chunk.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return images, labels.to(torch.int64), num_classes, [f"class{i}" for i in range(num_classes)]


# Options each reader understands, with their defaults (see load_dataset's docstring).
READER_DEFAULTS: dict[str, dict[str, Any]] = {
    "cifar10": {},
    "cifar100": {},
    "tinyimagenet": {"workers": None},
    # skip_unreadable: drop files that do not decode (and say how many) instead of stopping
    "imagefolder": {"test_fraction": 0.1, "split_seed": 0, "workers": None, "skip_unreadable": 0},
    "digits": {"test_fraction": 0.2, "split_seed": 0},
    "synthetic": {"num_samples": 2048, "test_samples": None, "num_classes": 10, "seed": 0, "noise": 0.25},
}

READERS: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor, int, list[str]]]] = {
    "cifar10": _read_cifar10,
    "cifar100": _read_cifar100,
    "tinyimagenet": _read_tinyimagenet,
    "imagefolder": _read_imagefolder,
    "digits": _read_digits,
    "synthetic": _read_synthetic,
}
