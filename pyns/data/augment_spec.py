"""`--augment` specifications: `crop,flip,rotate=20`, any subset of them, `none` or `default`.

A training command's augmentation setting is one of
- True / "default": the data set's standard augmentation (`pyns.data.augment.default_augment`),
- False / "none": none,
- a comma list of `crop` (random crop after zero padding of 4 pixels; `crop=N` pads N), `flip` (left-right
  flip of half the images) and `rotate=DEG` (an angle drawn uniformly from [-DEG, DEG]; `rotate` alone is
  TinyImageNet's 20 degrees).

Parsing and describing are torch-free (the CLI checks the flag before loading anything); `resolve_augment`
builds the `Augment` the batch loader applies.
"""
from __future__ import annotations

import math
from typing import Any

from pyns.errors import DataError

DEFAULT_PAD = 4          # the CIFAR recipe's 4-pixel padding before a 32x32 crop
DEFAULT_ROTATE = 20.0    # TinyImageNet's recipe: rotations of up to 20 degrees
MAX_ROTATE = 180.0       # beyond this an angle range repeats itself
SPEC_HELP = ("crop[=PAD], flip, rotate[=DEG] in any combination (e.g. crop,flip,rotate=20), `none`, or "
             "`default` (the data set's own: crop+flip for CIFAR and ImageFolder, plus rotate=20 for "
             "TinyImageNet, none for digits and synthetic)")


def parse_augment(text: str) -> dict[str, Any] | bool:
    """`crop,flip` -> {"pad": 4, "flip": True, "rotate_degrees": 0.0}; "none" -> False; "default" -> True."""
    raw = str(text).strip().lower()
    if raw in ("default", ""):
        return True
    if raw == "none":
        return False
    spec: dict[str, Any] = {"pad": 0, "flip": False, "rotate_degrees": 0.0}
    for item in raw.split(","):
        name, _, value = (part.strip() for part in item.partition("="))
        if name == "crop":
            pad = DEFAULT_PAD if not value else _number(value, "crop", integer=True)
            if not 1 <= pad <= 64:  # beyond 64 pixels of padding a crop is mostly zeros
                raise DataError(f"--augment crop={value}: the padding must be 1 to 64 pixels")
            spec["pad"] = int(pad)
        elif name == "flip" and not value:
            spec["flip"] = True
        elif name == "rotate":
            degrees = DEFAULT_ROTATE if not value else _number(value, "rotate")
            if not 0 < degrees <= MAX_ROTATE:
                raise DataError(f"--augment rotate={value}: the angle must be in (0, {MAX_ROTATE:g}] degrees")
            spec["rotate_degrees"] = float(degrees)
        elif name in ("none", "default"):
            raise DataError(f"--augment {text}: `{name}` stands alone, not in a list")
        else:
            raise DataError(f"--augment {text}: unknown item `{item.strip()}`; use {SPEC_HELP}")
    return spec


def _number(value: str, what: str, integer: bool = False) -> float:
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"--augment {what}={value}: not a number") from None
    if not math.isfinite(number) or (integer and not number.is_integer()):
        raise DataError(f"--augment {what}={value}: expected {'a whole number' if integer else 'a number'}")
    return number


def describe(pad: int, flip: bool, rotate_degrees: float) -> str:
    """`crop (pad 4) + flip + rotate ±20°`, or `none`."""
    parts = ([f"crop (pad {pad})"] if pad else []) + (["flip"] if flip else []) \
        + ([f"rotate ±{rotate_degrees:g}°"] if rotate_degrees else [])
    return " + ".join(parts) or "none"


def _fields(setting: Any, dataset: str) -> tuple[dict[str, Any], bool]:
    """(pad/flip/rotate fields, whether they are the data set's default)."""
    if isinstance(setting, str):
        setting = parse_augment(setting)
    if setting is True:
        from pyns.data.augment import default_augment  # torch

        aug = default_augment(dataset)
        return {"pad": aug.pad, "flip": aug.flip, "rotate_degrees": aug.rotate_degrees}, True
    if setting is False or setting is None:
        return {"pad": 0, "flip": False, "rotate_degrees": 0.0}, False
    if isinstance(setting, dict):
        return {"pad": int(setting.get("pad", 0)), "flip": bool(setting.get("flip", False)),
                "rotate_degrees": float(setting.get("rotate_degrees", 0.0))}, False
    raise DataError(f"an augmentation setting must be true, false, a spec such as 'crop,flip' or a dict, "
                    f"got {setting!r}")


def resolve_augment(setting: Any, dataset: str):
    """The `pyns.data.augment.Augment` for a setting (see the module doc), or None for no augmentation."""
    from pyns.data.augment import Augment  # local: defers torch; this module is torch-free

    fields, _ = _fields(setting, dataset)
    aug = Augment(**fields)
    return None if aug.is_identity else aug


def describe_run_augment(setting: Any, dataset: str) -> str:
    """What a run applies, in words: `crop (pad 4) + flip (the cifar10 default)`."""
    fields, is_default = _fields(setting, dataset)
    text = describe(**fields)
    return f"{text} (the {dataset} default)" if is_default else text
