"""Data readers (pyns.data.datasets) and the batched loader/augmentation (pyns.data.augment).

The readers are checked against files written here with known pixels; the augmentation against
hand-computed or plain-torch oracles; the loader's determinism by comparing batches bitwise.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pyns.data.augment import (
    NO_AUGMENT,
    Augment,
    BatchLoader,
    crop_and_flip,
    default_augment,
    gather_rows,
    horizontal_flip,
    normalize,
    random_crop,
    rotate,
)
from pyns.data.datasets import DATASETS, ImageDataset, channel_stats, load_dataset
from pyns.errors import DataError, RunError

# ----------------------------------------------------------------------------------------------------
# Fake data sets on disk
# ----------------------------------------------------------------------------------------------------


def _write_pickle(path: Path, content: dict) -> None:
    # Protocol 2 and bytes keys, like the original Python 2 files.
    path.write_bytes(pickle.dumps({k.encode(): v for k, v in content.items()}, protocol=2))


def _make_cifar10(parent: Path, per_batch: int = 3, test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_rows, train_labels = [], []
    for i in range(1, 6):
        rows = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        _write_pickle(folder / f"data_batch_{i}", {"data": rows, "labels": labels, "batch_label": b"x"})
        train_rows.append(rows)
        train_labels += labels
    test_rows = rng.integers(0, 256, (test, 3072), dtype=np.uint8)
    test_labels = rng.integers(0, 10, test).tolist()
    _write_pickle(folder / "test_batch", {"data": test_rows, "labels": test_labels})
    _write_pickle(folder / "batches.meta", {"label_names": [f"name{i}".encode() for i in range(10)]})
    return {"train_x": np.concatenate(train_rows), "train_y": np.array(train_labels),
            "test_x": test_rows, "test_y": np.array(test_labels)}


def _save_png(path: Path, pixels: np.ndarray) -> None:
    """Lossless pixels whatever the file name says: Pillow identifies files by content, not suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels if pixels.ndim == 3 else pixels, mode="RGB" if pixels.ndim == 3 else "L")
    image.save(path, format="PNG")


def _labelled_dataset(n: int, side: int = 8, seed: int = 0) -> ImageDataset:
    """Label = index, so the labels a loader yields say exactly which images it read."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, side, side), generator=generator, dtype=torch.uint8)
    return ImageDataset("fake", images, torch.arange(n), n, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))


# ----------------------------------------------------------------------------------------------------
# CIFAR
# ----------------------------------------------------------------------------------------------------


def test_cifar10_pixels_and_labels_match_the_files(tmp_path: Path) -> None:
    written = _make_cifar10(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):  # the parent and the layout folder
        train = load_dataset("cifar10", root, "train")
        # Each row is 1024 red, 1024 green, 1024 blue values, each a 32x32 row-major plane.
        expected = written["train_x"].reshape(-1, 3, 32, 32)
        assert train.images.dtype == torch.uint8 and train.images.shape == (15, 3, 32, 32)
        assert np.array_equal(train.images.numpy(), expected)
        assert np.array_equal(train.labels.numpy(), written["train_y"])
        assert train.num_classes == 10 and train.class_names[3] == "name3"
        assert (train.resolution, train.channels, len(train)) == (32, 3, 15)
    test = load_dataset("cifar10", tmp_path, "test")
    assert np.array_equal(test.images.numpy(), written["test_x"].reshape(-1, 3, 32, 32))
    assert np.array_equal(test.labels.numpy(), written["test_y"])
    # Both splits are normalised with the training-set statistics.
    assert test.mean == train.mean and test.std == train.std


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    fine = [99, 0, 42, 7, 63]
    _write_pickle(folder / "train", {"data": rows, "fine_labels": fine, "coarse_labels": [1, 2, 3, 4, 5]})
    _write_pickle(folder / "test", {"data": rows[:2], "fine_labels": fine[:2], "coarse_labels": [0, 0]})
    _write_pickle(folder / "meta", {"fine_label_names": [f"f{i}".encode() for i in range(100)]})
    train = load_dataset("cifar100", folder)
    assert np.array_equal(train.images.numpy(), rows.reshape(5, 3, 32, 32))
    assert train.labels.tolist() == fine and train.num_classes == 100
    assert load_dataset("cifar100", tmp_path, "test").labels.tolist() == fine[:2]


def test_grayscale_conversion_uses_luma_weights(tmp_path: Path) -> None:
    written = _make_cifar10(tmp_path, per_batch=1, test=1)
    grey = load_dataset("cifar10", tmp_path, "test", channels=1)
    rgb = written["test_x"].reshape(-1, 3, 32, 32).astype(np.int64)
    luma = (rgb[:, 0] * 299 + rgb[:, 1] * 587 + rgb[:, 2] * 114 + 500) // 1000
    assert np.array_equal(grey.images[:, 0].numpy(), luma)
    small = load_dataset("cifar10", tmp_path, "test", resolution=16)
    assert small.images.shape == (1, 3, 16, 16)


# ----------------------------------------------------------------------------------------------------
# TinyImageNet and ImageFolder
# ----------------------------------------------------------------------------------------------------


def test_tinyimagenet_tree(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-imagenet-200"
    wnids = ["n02", "n01", "n03"]  # deliberately unsorted: labels follow the sorted order
    folder.mkdir()
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    rng = np.random.default_rng(2)
    expected_train: list[tuple[np.ndarray, int]] = []
    for wnid in sorted(wnids):
        for j in range(2):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            _save_png(folder / "train" / wnid / "images" / f"{wnid}_{j}.JPEG", pixels)
            expected_train.append((pixels, sorted(wnids).index(wnid)))
    grey = rng.integers(0, 256, (64, 64), dtype=np.uint8)  # TinyImageNet has a few grayscale JPEGs
    _save_png(folder / "val" / "images" / "val_0.JPEG", grey)
    colour = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    _save_png(folder / "val" / "images" / "val_1.JPEG", colour)
    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn03\t0\t0\t10\t10\n"
                                                         "val_1.JPEG\tn01\t1\t2\t30\t40\n")

    train = load_dataset("tinyimagenet", tmp_path)
    assert train.images.shape == (6, 3, 64, 64) and train.num_classes == 3
    for i, (pixels, label) in enumerate(expected_train):
        assert np.array_equal(train.images[i].permute(1, 2, 0).numpy(), pixels)
        assert train.labels[i] == label
    val = load_dataset("tinyimagenet", folder, "val")
    assert val.labels.tolist() == [2, 0]
    assert np.array_equal(val.images[0].numpy(), np.stack([grey] * 3))  # grey -> RGB repeats the plane
    assert np.array_equal(val.images[1].permute(1, 2, 0).numpy(), colour)

    (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG n03\n")  # spaces, not tabs
    with pytest.raises(DataError, match="val_annotations.txt:1"):
        load_dataset("tinyimagenet", folder, "val")


def test_imagefolder_with_split_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    written = {}
    for split, classes in (("train", ("cat", "dog")), ("val", ("dog",))):
        for name in classes:
            for j in range(2):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                _save_png(tmp_path / split / name / f"{j}.png", pixels)
                written[(split, name, j)] = pixels
    train = load_dataset("imagefolder", tmp_path)
    assert train.class_names == ("cat", "dog") and train.labels.tolist() == [0, 0, 1, 1]
    assert np.array_equal(train.images[2].permute(1, 2, 0).numpy(), written[("train", "dog", 0)])
    val = load_dataset("imagefolder", tmp_path, "test")  # "test" finds val/
    # Labels index the *training* classes even though val/ has only "dog".
    assert val.labels.tolist() == [1, 1]
    assert np.array_equal(val.images[1].permute(1, 2, 0).numpy(), written[("val", "dog", 1)])
    assert val.mean == train.mean  # training statistics
    expected_mean = np.stack([written[k] for k in written if k[0] == "train"]).mean(axis=(0, 1, 2)) / 255
    assert np.allclose(train.mean, expected_mean)


def test_imagefolder_resize_and_holdout(tmp_path: Path) -> None:
    wide = np.arange(8 * 16 * 3, dtype=np.int64).reshape(8, 16, 3).astype(np.uint8)  # height 8, width 16
    _save_png(tmp_path / "a" / "wide.png", wide)
    for j in range(9):
        _save_png(tmp_path / "a" / f"sq{j}.png", np.full((8, 8, 3), j, dtype=np.uint8))
        _save_png(tmp_path / "b" / f"sq{j}.png", np.full((8, 8, 3), 100 + j, dtype=np.uint8))
    with pytest.raises(DataError, match="resolution"):
        load_dataset("imagefolder", tmp_path)  # mixed sizes need a resolution
    train = load_dataset("imagefolder", tmp_path, resolution=8, test_fraction=0.2)
    test = load_dataset("imagefolder", tmp_path, "test", resolution=8, test_fraction=0.2)
    # 10 images in a, 9 in b; 20% held out per class, rounded: 2 + 2.
    assert (len(train), len(test)) == (15, 4)
    assert sorted(test.labels.tolist()) == [0, 0, 1, 1]
    all_images = torch.cat([train.images, test.images]).flatten(1)
    assert len({tuple(row.tolist()) for row in all_images}) == 19  # disjoint and covering
    again = load_dataset("imagefolder", tmp_path, "test", resolution=8, test_fraction=0.2)
    assert torch.equal(again.images, test.images)
    # The 16x8 image: shorter side already 8, so only the centre 8 columns (4..11) are kept.
    cropped = wide[:, 4:12].transpose(2, 0, 1)
    found = [img for img in all_images.view(-1, 3, 8, 8) if torch.equal(img, torch.from_numpy(cropped))]
    assert len(found) == 1


# ----------------------------------------------------------------------------------------------------
# digits, synthetic, statistics
# ----------------------------------------------------------------------------------------------------


def test_digits_split_is_deterministic_disjoint_and_covering() -> None:
    from sklearn.datasets import load_digits

    train, test = load_dataset("digits"), load_dataset("digits", split="test")
    assert train.images.shape[1:] == (1, 8, 8) and len(train) + len(test) == 1797
    assert 0.19 < len(test) / 1797 < 0.21 and train.num_classes == 10
    bunch = load_digits()
    scaled = np.round(bunch.images * 255 / 16).astype(np.int64)  # independent scaling: 16 -> 255
    assert scaled.max() == 255
    expected = sorted(tuple(img.ravel()) + (int(lbl),) for img, lbl in zip(scaled, bunch.target))
    both = torch.cat([train.images, test.images]).flatten(1).numpy().astype(np.int64)
    labels = torch.cat([train.labels, test.labels]).numpy()
    got = sorted(tuple(row) + (int(lbl),) for row, lbl in zip(both, labels))
    assert got == expected
    assert torch.equal(load_dataset("digits", split="test").images, test.images)
    other = load_dataset("digits", split="test", split_seed=1)
    assert not torch.equal(other.labels, test.labels) or not torch.equal(other.images, test.images)
    assert test.mean == train.mean  # test normalised with the training statistics


def test_digits_upsample_pad_and_channels() -> None:
    base = load_dataset("digits", split="test")
    big = load_dataset("digits", split="test", resolution=28, channels=3)
    assert big.images.shape == (len(base), 3, 28, 28)
    small = base.images[:5, 0].numpy()
    # 28 = 3 x 8 + 4: each pixel becomes a 3x3 block, then 2 zero pixels on every side.
    oracle = np.stack([np.pad(np.kron(img, np.ones((3, 3), dtype=np.uint8)), 2) for img in small])
    for c in range(3):
        assert np.array_equal(big.images[:5, c].numpy(), oracle)
    assert torch.equal(big.labels, base.labels)


def test_synthetic_is_seeded_and_class_dependent() -> None:
    a = load_dataset("synthetic", num_samples=400, num_classes=4, resolution=16, seed=5)
    b = load_dataset("synthetic", num_samples=400, num_classes=4, resolution=16, seed=5)
    c = load_dataset("synthetic", num_samples=400, num_classes=4, resolution=16, seed=6)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert torch.bincount(a.labels).tolist() == [100] * 4
    test = load_dataset("synthetic", split="test", num_samples=400, num_classes=4, resolution=16, seed=5)
    assert len(test) == 100 and not torch.equal(test.images[:10], a.images[:10])
    # Class-dependent: a nearest-class-mean classifier fitted on train labels the test split well.
    centroids = torch.stack([a.images[a.labels == k].float().mean(0) for k in range(4)]).flatten(1)
    distances = torch.cdist(test.images.float().flatten(1), centroids)
    assert (distances.argmin(1) == test.labels).float().mean() > 0.9


def test_channel_stats_matches_numpy() -> None:
    images = torch.randint(0, 256, (7, 3, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    mean, std = channel_stats(images)
    array = images.numpy().astype(np.float64) / 255
    assert np.allclose(mean, array.mean(axis=(0, 2, 3))) and np.allclose(std, array.std(axis=(0, 2, 3)))


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


def test_missing_folders_name_the_expected_path(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in message and "--root" in message
    assert "cifar.html" in message
    with pytest.raises(DataError, match="cifar-100-python"):
        load_dataset("cifar100", tmp_path)
    with pytest.raises(DataError, match="wnids.txt"):
        load_dataset("tinyimagenet", tmp_path)
    with pytest.raises(DataError, match="--root"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="ImageFolder"):
        load_dataset("imagefolder", tmp_path / "nope")
    with pytest.raises(DataError, match="choose one of"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="unknown option"):
        load_dataset("digits", num_samples=3)
    with pytest.raises(DataError, match="split"):
        load_dataset("digits", split="holdout")


def test_malformed_cifar_files_are_named(tmp_path: Path) -> None:
    _make_cifar10(tmp_path, per_batch=1)
    folder = tmp_path / "cifar-10-batches-py"
    bad = folder / "data_batch_3"
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", tmp_path)
    assert str(bad) in str(err.value)
    _write_pickle(bad, {"data": np.zeros((2, 100), dtype=np.uint8), "labels": [0, 1]})  # wrong width
    with pytest.raises(DataError, match="3072"):
        load_dataset("cifar10", tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", tmp_path, "test")


def test_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    _make_cifar10(tmp_path, per_batch=1)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(DataError, match="data_batch_1"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------
# Augmentation primitives
# ----------------------------------------------------------------------------------------------------


def test_random_crop_hand_computed() -> None:
    image = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=torch.uint8).view(1, 1, 3, 3)
    # pad 1, window at (0, 2): one zero row on top, the window starts at original column 1.
    crop = random_crop(image, 1, torch.tensor([[0, 2]]))
    assert crop.view(3, 3).tolist() == [[0, 0, 0], [2, 3, 0], [5, 6, 0]]
    assert torch.equal(random_crop(image, 1, torch.tensor([[1, 1]])), image)  # centre = unchanged


def test_random_crop_matches_per_image_slicing() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), generator=generator, dtype=torch.uint8)
    offsets = torch.randint(0, 9, (6, 2), generator=generator)
    crops = random_crop(images, 4, offsets)
    for i in range(6):
        canvas = torch.zeros(3, 16, 16, dtype=torch.uint8)
        canvas[:, 4:12, 4:12] = images[i]
        dy, dx = offsets[i].tolist()
        assert torch.equal(crops[i], canvas[:, dy:dy + 8, dx:dx + 8])


def test_fused_crop_and_flip_and_row_gather() -> None:
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (5, 3, 7, 7), generator=generator, dtype=torch.uint8)
    offsets = torch.randint(0, 5, (5, 2), generator=generator)
    flips = torch.tensor([True, False, True, True, False])
    fused = crop_and_flip(images, 2, offsets, flips)
    for i in range(5):
        crop = random_crop(images[i:i + 1], 2, offsets[i:i + 1])[0]
        assert torch.equal(fused[i], torch.flip(crop, dims=[2]) if flips[i] else crop)
    index = torch.tensor([4, 0, 4, 2])
    # Rows of 147, 105, 4 and 8 bytes: the plain, int32 and int64 paths.
    for rows in (images, images[:, :, :, :5], images[:, :1, :2, :2], images[:, :2, :2, :2]):
        rows = rows.contiguous()
        assert torch.equal(gather_rows(rows, index), rows[index])


def test_flip_rotate_normalize() -> None:
    images = torch.rand(4, 3, 6, 6) * 255
    mask = torch.tensor([True, False, True, False])
    flipped = horizontal_flip(images, mask)
    assert torch.equal(flipped[0], torch.flip(images[0], dims=[2])) and torch.equal(flipped[1], images[1])
    turned = rotate(images, torch.tensor([90.0, -90.0, 0.0, 180.0]))
    assert torch.allclose(turned[0], torch.rot90(images[0], 1, dims=(1, 2)), atol=1e-3)
    assert torch.allclose(turned[1], torch.rot90(images[1], -1, dims=(1, 2)), atol=1e-3)
    assert torch.allclose(turned[2], images[2], atol=1e-3)
    assert torch.allclose(turned[3], torch.rot90(images[3], 2, dims=(1, 2)), atol=1e-3)
    # A 45 degree turn moves the corners outside the image: they are filled with zeros.
    assert (rotate(images[:1], torch.tensor([45.0]))[0, :, 0, 0] == 0).all()
    raw = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([0.2, 0.25, 0.3])
    oracle = (raw.numpy().astype(np.float64) / 255 - mean.numpy()[:, None, None]) / std.numpy()[:, None, None]
    assert np.allclose(normalize(raw, mean, std).numpy(), oracle, atol=1e-5)


def test_default_augment() -> None:
    assert default_augment("cifar10") == Augment(pad=4, flip=True, rotate_degrees=0.0)
    assert default_augment("tinyimagenet").rotate_degrees == 20.0
    assert default_augment("digits").is_identity
    assert set(DATASETS) == {"cifar10", "cifar100", "tinyimagenet", "imagefolder", "digits", "synthetic"}
    for name in DATASETS:
        default_augment(name)


# ----------------------------------------------------------------------------------------------------
# Loader
# ----------------------------------------------------------------------------------------------------


def _collect(loader, limit: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    batches = []
    for batch in loader:
        batches.append(batch)
        if limit is not None and len(batches) == limit:
            break
    return batches


def test_eval_loader_is_ordered_and_normalised() -> None:
    data = _labelled_dataset(10)
    loader = BatchLoader(data, 4, train=False, augment=default_augment("cifar10"))  # augment ignored
    batches = _collect(loader)
    assert len(batches) == len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    x = torch.cat([b[0] for b in batches])
    assert torch.cat([b[1] for b in batches]).tolist() == list(range(10))
    mean, std = np.array(data.mean)[:, None, None], np.array(data.std)[:, None, None]
    assert np.allclose(x.numpy(), (data.images.numpy() / 255 - mean) / std, atol=1e-5)
    assert x.dtype == torch.float32 and loader.epoch == 1


def test_train_loader_shuffles_every_epoch_and_covers_the_data() -> None:
    loader = BatchLoader(_labelled_dataset(23), 5, train=True, seed=3)
    epoch0 = torch.cat([y for _, y in loader])
    epoch1 = torch.cat([y for _, y in loader])
    assert sorted(epoch0.tolist()) == list(range(23)) == sorted(epoch1.tolist())
    assert not torch.equal(epoch0, epoch1) and loader.epoch == 2
    dropped = BatchLoader(_labelled_dataset(23), 5, train=True, drop_last=True)
    assert len(dropped) == 4 and sum(len(y) for _, y in dropped) == 20


def test_augmented_samples_are_crops_and_flips_of_their_source() -> None:
    data = _labelled_dataset(6, side=6)
    loader = BatchLoader(data, 3, train=True, augment=Augment(pad=2, flip=True), seed=1)
    mean, std = torch.tensor(data.mean).view(3, 1, 1), torch.tensor(data.std).view(3, 1, 1)
    seen_flip = seen_shift = False
    for x, y in loader:
        for sample, label in zip(x, y):
            pixels = ((sample * std + mean) * 255).round().to(torch.uint8)
            source = data.images[label]
            canvas = torch.zeros(3, 10, 10, dtype=torch.uint8)
            canvas[:, 2:8, 2:8] = source
            matches = []
            for dy in range(5):  # every offset of a 6x6 window in the 10x10 padded canvas
                for dx in range(5):
                    window = canvas[:, dy:dy + 6, dx:dx + 6]
                    matches += [(dy, dx, f) for f, cand in ((False, window), (True, window.flip(2)))
                                if torch.equal(cand, pixels)]
            assert matches, "an augmented sample is not a padded crop (and flip) of its source image"
            seen_flip |= any(f for _, _, f in matches) and not any(not f for _, _, f in matches)
            seen_shift |= (2, 2) not in {(dy, dx) for dy, dx, _ in matches}
    assert seen_flip and seen_shift


@pytest.mark.parametrize("augment", [default_augment("tinyimagenet"), None])
def test_resume_yields_the_same_remaining_batches(augment: Augment | None) -> None:
    data = _labelled_dataset(22)

    def make() -> BatchLoader:
        return BatchLoader(data, 4, train=True, augment=augment, seed=11)

    reference = make()
    uninterrupted = _collect(reference) + _collect(reference)  # epochs 0 and 1: 6 batches each
    assert len(uninterrupted) == 12
    for stop in (2, 6, 9):  # mid-epoch, after the last batch of epoch 0, mid-epoch 1
        first = make()
        seen = _collect(first, limit=min(stop, 6))
        if stop > 6:
            seen += _collect(first, limit=stop - 6)
        assert len(seen) == stop
        buffer = io.BytesIO()
        torch.save(first.state_dict(), buffer)  # a checkpoint must survive weights_only loading
        buffer.seek(0)
        resumed = make()
        resumed.load_state_dict(torch.load(buffer, weights_only=True))
        got = list(seen)
        for _ in range(3):  # at most the rest of this epoch and the next one
            got += _collect(resumed, limit=12 - len(got))
            if len(got) == 12:
                break
        assert len(got) == 12
        for (xa, ya), (xb, yb) in zip(got, uninterrupted):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_resume_from_another_ranks_state_replays_the_stream() -> None:
    data = _labelled_dataset(40)
    augment = Augment(pad=4, flip=True, rotate_degrees=10.0)

    def make(rank: int) -> BatchLoader:
        return BatchLoader(data, 3, train=True, augment=augment, seed=2, rank=rank, world_size=2)

    uninterrupted = _collect(make(1))
    rank0 = make(0)
    _collect(rank0, limit=4)
    resumed = make(1)
    resumed.load_state_dict(rank0.state_dict())  # DDP: only rank 0 wrote the checkpoint
    rest = _collect(resumed)
    assert len(rest) == len(uninterrupted) - 4
    for (xa, ya), (xb, yb) in zip(rest, uninterrupted[4:]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_state_with_other_settings_is_refused() -> None:
    data = _labelled_dataset(12)
    state = BatchLoader(data, 4, train=True, seed=1).state_dict()
    with pytest.raises(RunError, match="seed"):
        BatchLoader(data, 4, train=True, seed=2).load_state_dict(state)
    with pytest.raises(RunError, match="batch_size"):
        BatchLoader(data, 3, train=True, seed=1).load_state_dict(state)


def test_stale_iterator_refuses_to_continue() -> None:
    loader = BatchLoader(_labelled_dataset(12), 2, train=True)
    old = iter(loader)
    next(old)
    new = iter(loader)
    next(new)  # continues the epoch where `old` stopped
    assert loader.state_dict()["position"] == 2
    with pytest.raises(RuntimeError, match="stale"):
        next(old)


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharding_is_disjoint(world_size: int) -> None:
    data = _labelled_dataset(23)
    train_shards = [torch.cat([y for _, y in BatchLoader(data, 4, train=True, seed=7, rank=r,
                                                        world_size=world_size)]).tolist()
                    for r in range(world_size)]
    flat = [i for shard in train_shards for i in shard]
    assert len(flat) == len(set(flat)) == 23 - 23 % world_size  # disjoint; equal shares for DDP
    assert len({len(s) for s in train_shards}) == 1
    eval_loaders = [BatchLoader(data, 4, train=False, rank=r, world_size=world_size) for r in range(world_size)]
    eval_shards = [torch.cat([y for _, y in loader]).tolist() for loader in eval_loaders]
    assert sorted(i for shard in eval_shards for i in shard) == list(range(23))  # covering exactly once
    assert [len(loader) for loader in eval_loaders] == [-(-len(s) // 4) for s in eval_shards]


def test_no_augment_constant() -> None:
    assert NO_AUGMENT.is_identity and not Augment().is_identity
