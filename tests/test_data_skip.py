"""ImageFolder with a damaged file: stops with a clear message by default; with skip_unreadable=1 the
other images load (exactly, with their labels) and the count of skipped files reaches the user."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pyns.data.datasets import load_dataset
from pyns.errors import DataError


def _tree(tmp_path: Path) -> dict[tuple[str, int], np.ndarray]:
    rng = np.random.default_rng(5)
    written = {}
    for split, names in (("train", ("cat", "dog")), ("val", ("cat", "dog"))):
        for name in names:
            for j in range(3):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                path = tmp_path / split / name / f"{j}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
                written[(split, name, j)] = pixels
    (tmp_path / "train" / "dog" / "1.png").write_bytes(b"not a png at all")  # the damaged file
    return written


def test_damaged_image_stops_by_default(tmp_path):
    _tree(tmp_path)
    with pytest.raises(DataError, match="cannot read image .*1.png"):
        load_dataset("imagefolder", tmp_path)


def test_skip_unreadable_keeps_the_rest_and_says_how_many(tmp_path, capsys):
    written = _tree(tmp_path)
    train = load_dataset("imagefolder", tmp_path, skip_unreadable=1)
    assert train.labels.tolist() == [0, 0, 0, 1, 1]
    kept = [("cat", 0), ("cat", 1), ("cat", 2), ("dog", 0), ("dog", 2)]
    for i, (name, j) in enumerate(kept):
        assert np.array_equal(train.images[i].permute(1, 2, 0).numpy(), written[("train", name, j)])
    assert len(train.notes) == 1 and "skipped 1 unreadable image(s) of 6" in train.notes[0]
    assert load_dataset("imagefolder", tmp_path, "val", skip_unreadable=1).notes == ()

    from pyns.cli.main import main  # the CLI prints the note

    code = main(["train", "digits_cnn", "--data", "imagefolder", "--root", str(tmp_path), "--data-option",
                 "skip_unreadable=1", "--set", "classes=2", "--set", "in_channels=3", "--out", str(tmp_path / "run"),
                 "--epochs", "1", "--no-latency", "--quiet", "--threads", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "skipped 1 unreadable image(s) of 6" in err
