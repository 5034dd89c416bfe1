"""Run-folder utilities: atomic writes survive interruption, JSONL logs, config checks, RNG state."""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from pyns.errors import RunError
from pyns.runfiles import (
    append_jsonl,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_writer,
    capture_rng_state,
    check_config,
    compare_configs,
    load_config,
    read_jsonl,
    restore_rng_state,
    save_config,
    to_jsonable,
    write_jsonl,
)


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
def test_interrupted_write_keeps_old_file_and_leaves_no_temporary(tmp_path: Path, interrupt: type) -> None:
    target = tmp_path / "state.bin"
    atomic_write_bytes(target, b"old complete version")
    with pytest.raises(interrupt):
        with atomic_writer(target, "wb") as handle:
            handle.write(b"new but only half")
            handle.flush()
            raise interrupt()
    assert target.read_bytes() == b"old complete version"
    assert _leftovers(tmp_path, {"state.bin"}) == []


def test_interrupted_first_write_creates_nothing(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "fresh.json"
    with pytest.raises(KeyboardInterrupt):
        with atomic_writer(target, "w") as handle:
            handle.write('{"half": ')
            raise KeyboardInterrupt
    assert not target.exists()
    assert _leftovers(target.parent, set()) == []


def test_interrupted_torch_save_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "ckpt.pt"
    atomic_torch_save({"epoch": 1, "w": torch.arange(4.0)}, target)
    real_save = torch.save

    def save_then_die(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)  # the bytes are in the temporary file ...
        raise KeyboardInterrupt  # ... when Ctrl-C arrives before the rename

    monkeypatch.setattr(torch, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        atomic_torch_save({"epoch": 2, "w": torch.zeros(4)}, target)
    monkeypatch.undo()
    loaded = torch.load(target, weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], torch.arange(4.0))
    assert _leftovers(tmp_path, {"ckpt.pt"}) == []


def test_atomic_write_respects_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "f", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_jsonl_append_read_and_torn_tail(tmp_path: Path) -> None:
    log = tmp_path / "m.jsonl"
    rows = [{"epoch": 1, "acc": 0.5}, {"epoch": 2, "acc": 0.75, "lr": (0.1, 0.01)}]
    for row in rows:
        append_jsonl(log, row)
    lines = log.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"epoch": 1, "acc": 0.5}, {"epoch": 2, "acc": 0.75, "lr": [0.1, 0.01]}]
    # A process killed mid-append leaves a partial last line without newline: ignored on read.
    with open(log, "a") as handle:
        handle.write('{"epoch": 3, "ac')
    assert [r["epoch"] for r in read_jsonl(log)] == [1, 2]
    with pytest.raises(RunError):
        read_jsonl(log, allow_torn_tail=False)
    # Damage in the middle is not a torn tail.
    log.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(RunError, match="line 2"):
        read_jsonl(log)
    write_jsonl(log, rows[:1])
    assert read_jsonl(log) == [{"epoch": 1, "acc": 0.5}]
    assert read_jsonl(tmp_path / "absent.jsonl") == []


@dataclass
class _Cfg:
    lr: float
    milestones: tuple[int, ...]
    where: Path


def test_to_jsonable_and_json_write(tmp_path: Path) -> None:
    cfg = _Cfg(0.1, (100, 200), Path("/a/b"))
    value = {"cfg": cfg, "n": np.int64(3), "x": torch.tensor(2.5), "arr": np.arange(3), "s": {2, 1}}
    assert to_jsonable(value) == {"cfg": {"lr": 0.1, "milestones": [100, 200], "where": "/a/b"}, "n": 3, "x": 2.5,
                                  "arr": [0, 1, 2], "s": [1, 2]}
    atomic_write_json(tmp_path / "c.json", value)
    assert json.loads((tmp_path / "c.json").read_text())["cfg"]["milestones"] == [100, 200]
    with pytest.raises(TypeError):
        to_jsonable(object())


def test_config_compare_and_check(tmp_path: Path) -> None:
    saved = {"recipe": _Cfg(0.1, (100, 200), Path("x")), "world_size": 1}
    # Tuples and lists with the same items are the same configuration (JSON has no tuples).
    assert compare_configs(to_jsonable(saved), saved) == []
    changed = {"recipe": _Cfg(0.05, (100, 200), Path("x")), "world_size": 2, "extra": True}
    assert compare_configs(saved, changed) == [
        "extra: not set before, now true",
        "recipe.lr: was 0.1, now 0.05",
        "world_size: was 1, now 2",
    ]
    assert compare_configs(saved, changed, ignore=("recipe.lr", "world_size", "extra")) == []

    check_config(tmp_path, saved)  # first time: saved
    assert load_config(tmp_path)["recipe"]["milestones"] == [100, 200]
    check_config(tmp_path, saved)  # same again: fine
    with pytest.raises(RunError, match=r"recipe\.lr: was 0\.1, now 0\.05"):
        check_config(tmp_path, changed)
    assert load_config(tmp_path)["world_size"] == 1  # a refused config is not written
    save_config(tmp_path, changed)
    assert load_config(tmp_path)["world_size"] == 2
    assert load_config(tmp_path / "nothing") is None


def _draw() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3).tolist())


def test_rng_state_roundtrip_through_weights_only_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leave numpy with a cached Gaussian, part of its state
    atomic_torch_save({"rng": capture_rng_state()}, tmp_path / "rng.pt")
    expected = _draw()
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert _draw() != expected
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert _draw() == expected
