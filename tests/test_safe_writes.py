"""Writing output never destroys another file (issue 14, item 1) and an unwritable output is one message,
exit 2, before any work (item 2).

Devices are never written for real: a character device is a private `mknod` copy of /dev/null in a
temporary folder (root only), and /dev/full is only used where pyns must refuse it (ENOSPC) — the test
then checks it is still the same character device.
"""
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from pyns.cli.main import main
from pyns.errors import OutputError
from pyns.runfiles import atomic_torch_save, atomic_write_json, atomic_write_text
from pyns.safewrite import check_writable_file, check_writable_folder


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def leftovers(folder: Path) -> list[str]:
    """Temporary or probe files a writer left behind, anywhere under `folder`."""
    return sorted(str(p) for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".pyns-probe"))


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


# ---- item 1: what the target is decides how it is written --------------------------------------------


def test_symlink_is_written_through_and_stays_a_link(tmp_path, umask_022):
    real = tmp_path / "elsewhere" / "real.json"
    real.parent.mkdir()
    real.write_text("old")
    os.chmod(real, 0o640)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    atomic_write_json(link, {"new": 1})
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert json.loads(real.read_text()) == {"new": 1}
    assert stat.S_IMODE(real.stat().st_mode) == 0o640  # the file keeps its mode (not 0600)
    assert leftovers(tmp_path) == []


def test_dangling_symlink_creates_the_file_it_names(tmp_path, umask_022):
    link = tmp_path / "link.txt"
    link.symlink_to(tmp_path / "target.txt")
    atomic_write_text(link, "hello")
    assert link.is_symlink() and (tmp_path / "target.txt").read_text() == "hello"


def test_regular_file_is_replaced_atomically_and_keeps_its_mode(tmp_path, umask_022):
    target = tmp_path / "f.txt"
    target.write_text("old")
    os.chmod(target, 0o600)
    inode = target.stat().st_ino
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and target.stat().st_ino != inode  # a new file, renamed into place
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write_text(tmp_path / "fresh.txt", "x")
    assert stat.S_IMODE((tmp_path / "fresh.txt").stat().st_mode) == 0o644


def test_fifo_is_written_through_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo, "rb").read()))
    reader.start()
    for _ in range(200):  # the reader must have opened its end before the writer looks
        if not reader.is_alive() or _fifo_has_reader(fifo):
            break
    atomic_write_text(fifo, "through the pipe\n")
    reader.join(timeout=10)
    assert received == [b"through the pipe\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert leftovers(tmp_path) == []


def _fifo_has_reader(fifo: Path) -> bool:
    import time

    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        time.sleep(0.01)
        return False
    os.close(fd)  # a writer that closes without writing sends nothing (no EOF while another writer comes)
    return True


def test_fifo_without_reader_is_refused_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(OutputError, match="FIFO and no process is reading it"):
        atomic_write_text(fifo, "x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and leftovers(tmp_path) == []


def test_character_device_is_written_directly_never_replaced(tmp_path):
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a private /dev/null
    except PermissionError:
        pytest.skip("mknod needs root (CAP_MKNOD)")
    link = tmp_path / "link-to-null"
    link.symlink_to(node)
    atomic_write_json(node, {"a": 1})
    atomic_torch_save({"b": 2}, link)
    info = os.lstat(node)
    assert stat.S_ISCHR(info.st_mode) and info.st_rdev == os.makedev(1, 3)
    assert link.is_symlink() and leftovers(tmp_path) == []


def test_dev_full_gives_the_reason_and_stays_a_device(capsys):
    before = os.stat("/dev/full")
    with pytest.raises(OutputError, match="/dev/full: No space left on device"):
        atomic_write_text("/dev/full", "x" * 100_000)
    code, _, err = run(capsys, "scale", "digits_cnn", "--params", "0.5x", "--out", "/dev/full")
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    after = os.stat("/dev/full")
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


def test_folder_socket_and_block_device_are_refused(tmp_path):
    import socket

    with pytest.raises(OutputError, match="is a folder"):
        atomic_write_text(tmp_path, "x")
    sock_path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    try:
        with pytest.raises(OutputError, match="socket"):
            atomic_write_text(sock_path, "x")
        assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)
    finally:
        server.close()


def test_cli_outputs_are_0644_and_write_through_symlinks(capsys, tmp_path, umask_022):
    out = tmp_path / "scaled.arch"
    code, _, err = run(capsys, "scale", "digits_cnn", "--params", "0.5x", "--out", out)
    assert code == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    real = tmp_path / "real.arch"
    real.write_text("")
    link = tmp_path / "link.arch"
    link.symlink_to(real)
    code, _, err = run(capsys, "tiny", "digits_effnet", "--macs", "0.5x", "--out", link)
    assert code == 0, err
    assert link.is_symlink() and "network digits_effnet" in real.read_text()
    assert stat.S_IMODE(real.stat().st_mode) == 0o644


def test_profile_and_formula_files_are_0644_and_replaced_not_rewritten_in_place(tmp_path, umask_022):
    from pyns.scaling.profile import Profile, SymbolFit
    from pyns.tinynet.formula import TinyFormula, load_default_formula

    formula = load_default_formula()
    target = tmp_path / "formula.json"
    target.write_text("{}")
    inode = target.stat().st_ino
    formula.save(target)  # was Path.write_text: truncated in place, so a reader could see half a file
    assert target.stat().st_ino != inode and TinyFormula.load(target).to_json() == formula.to_json()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    profile = Profile("params", {"c1": SymbolFit(2.0, 0.5, 1.0, 6)}, (10.0, 1000.0), 6)
    profile.save(tmp_path / "profile.json")
    assert stat.S_IMODE((tmp_path / "profile.json").stat().st_mode) == 0o644
    assert Profile.load(tmp_path / "profile.json").fits["c1"].beta == 0.5


def test_descent_figure_through_a_symlink_keeps_the_link(tmp_path):
    from pyns.neuralscale.plots import plot_descent

    run_dir = tmp_path / "descent"
    run_dir.mkdir()
    rows = [{"iteration": i, "start_widths": {"c1": 16 - i, "c2": 32 - 2 * i}} for i in range(2)]
    (run_dir / "summary.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    real = tmp_path / "figure.png"
    real.write_bytes(b"")
    link = tmp_path / "link.png"
    link.symlink_to(real)
    plot_descent(run_dir, link)
    assert link.is_symlink() and real.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert leftovers(tmp_path) == []


# ---- item 2: an unwritable output is one message and exit 2, before any work ---------------------------


def _bad_paths(tmp: Path, kind: str) -> dict[str, tuple[Path, str]]:
    """name -> (path, words the message must contain); `kind` is "file" or "folder" (what --out names)."""
    blocker = tmp / "a-file"
    blocker.write_text("I am a file")
    folder = tmp / "a-folder"
    folder.mkdir(exist_ok=True)
    return {
        "under-a-file": (blocker / "out", "is a file, not a folder"),
        "name-too-long": (tmp / ("x" * 300), "bytes long"),
        "proc": (Path("/proc/pyns-no-such-dir/out"), "does not accept new files"),
        # a folder given for a file, a file given for a folder
        "wrong-kind": ((folder, "is a folder") if kind == "file" else (blocker, "is not a folder")),
    }


def _prune_run(tmp: Path) -> Path:
    """A real (tiny) pruning run folder, for `fit` and `plot`."""
    folder = tmp / "prune-run"
    code = main(["prune", "digits_cnn", "--data", "digits", "--out", str(folder), "--warmup", "0", "--epochs", "1",
                 "--every", "2", "--units", "6", "--batch-size", "128", "--no-augment", "--quiet", "--no-fit"])
    assert code == 0
    return folder


def _tiny_run(tmp: Path) -> Path:
    """A tiny sampling run folder with made-up accuracies (the fit only reads them), for `tiny fit`."""
    from pyns.arch import load
    from pyns.tinynet.sample import plan_cells

    arch = load("digits_effnet", policy="tinynet")
    cells, draws = plan_cells(arch, 10, (0.35, 1.2), (0.03, 1.05), seed=0)
    folder = tmp / "tiny-run"
    (folder / "cells").mkdir(parents=True)
    base = arch.count()
    config = {"kind": "tiny-sample", "version": 1, "arch": arch.name, "policy": "tinynet", "data": "digits",
              "recipe": {"epochs": 1}, "base": {"macs": base.macs, "params": base.params,
                                                "resolution": arch.resolution}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "cells.json").write_text(json.dumps({"draws": draws, "cells": [c.to_dict() for c in cells]}))
    for i, cell in enumerate(cells):
        (folder / "cells" / cell.name).mkdir()
        acc = 0.3 + 0.5 * cell.c - 0.01 * i
        (folder / "cells" / cell.name / "result.json").write_text(json.dumps(
            {**cell.to_dict(), "final_test_acc": acc, "best_test_acc": acc, "epochs": 1, "seconds": 1.0}))
    return folder


@pytest.fixture(scope="module")
def run_folders(tmp_path_factory):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tmp = tmp_path_factory.mktemp("inputs")
        yield {"prune": _prune_run(tmp), "tiny": _tiny_run(tmp)}
    finally:
        torch.set_num_threads(threads)


TRAIN_FAST = ["--data", "digits"]
FILE_COMMANDS = {
    "scale": lambda r, out: ["scale", "digits_cnn", "--params", "0.5x", "--out", out],
    "tiny": lambda r, out: ["tiny", "digits_effnet", "--macs", "0.5x", "--out", out],
    "fit": lambda r, out: ["fit", r["prune"], "--out", out],
    "plot": lambda r, out: ["plot", r["prune"], "--out", out],
    "tiny fit": lambda r, out: ["tiny", "fit", r["tiny"], "--out", out, "--no-plots"],
}
FOLDER_COMMANDS = {
    "prune": lambda out: ["prune", "digits_cnn", *TRAIN_FAST, "--out", out, "--warmup", "1", "--epochs", "1"],
    "train": lambda out: ["train", "digits_cnn", *TRAIN_FAST, "--out", out, "--epochs", "1", "--no-latency"],
    "descent": lambda out: ["descent", "digits_cnn", *TRAIN_FAST, "--out", out, "--iterations", "1",
                            "--warmup", "1", "--epochs", "1"],
    "sweep": lambda out: ["sweep", "digits_cnn", *TRAIN_FAST, "--out", out, "--width-ratios", "0.5",
                          "--methods", "uniform", "--seeds", "1", "--epochs", "1"],
    "tiny sample": lambda out: ["tiny", "sample", "digits_effnet", *TRAIN_FAST, "--out", out, "--n", "1",
                                "--epochs", "1"],
}
CASES = ("under-a-file", "name-too-long", "proc", "wrong-kind")


def _assert_one_clean_message(code: int, err: str, path: Path, words: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if not line.startswith("hint:")]
    assert len(lines) == 1 and lines[0].startswith("pyns: error:"), err
    assert str(path) in lines[0] and words in lines[0], err


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", list(FILE_COMMANDS))
def test_unwritable_output_file(capsys, tmp_path, run_folders, command, case):
    path, words = _bad_paths(tmp_path, "file")[case]
    before = {p: p.stat().st_mtime_ns for p in run_folders["prune"].rglob("*")}
    code, _, err = run(capsys, *FILE_COMMANDS[command](run_folders, path))
    _assert_one_clean_message(code, err, path, words)
    assert leftovers(tmp_path) == [] and leftovers(run_folders["prune"]) == []
    assert before == {p: p.stat().st_mtime_ns for p in run_folders["prune"].rglob("*")}  # nothing rewritten


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", list(FOLDER_COMMANDS))
def test_unwritable_run_folder_is_refused_before_any_work(capsys, tmp_path, monkeypatch, command, case):
    import pyns.data.datasets

    def no_data(*args, **kwargs):  # the check must come before the data (and so before any training)
        raise AssertionError("the data set was loaded before the output folder was checked")

    monkeypatch.setattr(pyns.data.datasets, "load_dataset", no_data)
    path, words = _bad_paths(tmp_path, "folder")[case]
    code, _, err = run(capsys, *FOLDER_COMMANDS[command](path))
    _assert_one_clean_message(code, err, path, words)
    assert leftovers(tmp_path) == []


def test_library_writers_name_the_path_and_reason(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    for call in (lambda p: atomic_write_text(p, "x"), check_writable_file, check_writable_folder):
        with pytest.raises(OutputError, match=r"f/sub/out.*is a file, not a folder"):
            call(blocker / "sub" / "out")
    with pytest.raises(OutputError, match="bytes long"):
        atomic_torch_save({}, tmp_path / ("y" * 260))
    with pytest.raises(OutputError, match="does not accept new files"):
        atomic_write_json("/proc/pyns-test.json", {})
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


class _FullDisk:
    """A file object that accepts `room` bytes and then fails like a full disk."""

    def __init__(self, handle, room: int):
        self.handle, self.room = handle, room

    def write(self, data):
        if len(data) > self.room:
            import errno

            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.handle.write(data)

    def __getattr__(self, name):
        return getattr(self.handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()


def test_disk_full_in_the_middle_of_a_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    import torch

    import pyns.safewrite

    target = tmp_path / "checkpoint.pt"
    atomic_torch_save({"step": 1}, target)
    real_fdopen = os.fdopen
    monkeypatch.setattr(pyns.safewrite.os, "fdopen", lambda *a, **k: _FullDisk(real_fdopen(*a, **k), 4096))
    with pytest.raises(OutputError, match="checkpoint.pt: No space left on device"):
        atomic_torch_save({"step": 2, "weights": torch.zeros(100_000)}, target)  # torch.save says RuntimeError
    with pytest.raises(OutputError, match="No space left on device"):
        atomic_write_text(target.with_name("big.txt"), "x" * 100_000)
    monkeypatch.undo()
    assert torch.load(target, weights_only=True) == {"step": 1}
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
