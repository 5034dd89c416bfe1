"""Files that ship inside the package: the grammar and the .arch library.

In a wheel they live under `pyns/grammars` and `pyns/archs` (CMake installs them there). Running from a
source checkout (no install) falls back to the repository's top-level folders.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parent.parent


def _data_dir(name: str) -> Path:
    packaged = Path(str(resources.files("pyns"))) / name
    if packaged.is_dir():
        return packaged
    return _REPO_ROOT / name


def grammar_path() -> Path:
    return _data_dir("grammars") / "arch.lark"


def archs_dir() -> Path:
    return _data_dir("archs")


def shipped_archs() -> list[str]:
    """Names usable as `pyns count NAME`."""
    return sorted(p.stem for p in archs_dir().glob("*.arch"))
