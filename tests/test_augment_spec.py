"""`--augment crop,flip,rotate=20`: parsed exactly, described on the run's first line, and applied."""
from __future__ import annotations

import json

import pytest

from pyns.data.augment_spec import describe_run_augment, parse_augment, resolve_augment
from pyns.errors import DataError


@pytest.mark.parametrize("text, expected", [
    ("crop,flip,rotate=20", {"pad": 4, "flip": True, "rotate_degrees": 20.0}),
    ("flip", {"pad": 0, "flip": True, "rotate_degrees": 0.0}),
    ("crop=2", {"pad": 2, "flip": False, "rotate_degrees": 0.0}),
    ("rotate", {"pad": 0, "flip": False, "rotate_degrees": 20.0}),
    (" Crop , rotate=7.5 ", {"pad": 4, "flip": False, "rotate_degrees": 7.5}),
    ("none", False),
    ("default", True),
])
def test_parse(text, expected):
    assert parse_augment(text) == expected


@pytest.mark.parametrize("text, message", [
    ("crop,zoom", "unknown item `zoom`"), ("rotate=0", "angle must be in (0, 180]"),
    ("crop=1.5", "whole number"), ("crop=0", "1 to 64"), ("flip,none", "stands alone"), ("rotate=abc", "not a number"),
])
def test_bad_specs_are_one_clear_error(text, message):
    with pytest.raises(DataError, match=None) as err:
        parse_augment(text)
    assert message in str(err.value)


def test_resolve_and_describe():
    aug = resolve_augment("crop=3,rotate=10", "digits")
    assert (aug.pad, aug.flip, aug.rotate_degrees) == (3, False, 10.0)
    assert resolve_augment(False, "cifar10") is None and resolve_augment("none", "cifar10") is None
    cifar = resolve_augment(True, "cifar10")
    assert (cifar.pad, cifar.flip, cifar.rotate_degrees) == (4, True, 0.0)
    assert resolve_augment(True, "digits") is None  # digits' default is none (a flipped digit is another glyph)
    assert describe_run_augment(True, "imagefolder") == "crop (pad 4) + flip (the imagefolder default)"
    assert describe_run_augment("flip,rotate=20", "cifar10") == "flip + rotate ±20°"
    assert describe_run_augment(False, "cifar10") == "none"


def test_prune_keeps_the_spec_in_its_config_and_its_loader_applies_it(tmp_path, one_thread, capsys):
    from pyns.cli.main import main

    out = tmp_path / "p"
    code = main(["prune", "digits_cnn", "--data", "digits", "--out", str(out), "--warmup", "1", "--epochs", "1",
                 "--every", "4", "--units", "3", "--batch-size", "64", "--skip-at-min-width", "--quiet",
                 "--no-fit", "--augment", "crop=1,rotate=15"])
    text = capsys.readouterr().out
    assert code == 0
    assert "augmentation crop (pad 1) + rotate ±15°" in text.splitlines()[0]
    saved = json.loads((out / "config.json").read_text())["prune"]["augment"]
    assert saved == {"pad": 1, "flip": False, "rotate_degrees": 15.0}
    # the loader a resumed run builds from that config applies exactly this augmentation
    from pyns.neuralscale.prune.schedule import PruneConfig
    assert resolve_augment(PruneConfig.from_dict(json.loads((out / "config.json").read_text())["prune"]).augment,
                           "digits").pad == 1
