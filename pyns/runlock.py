"""One process per run folder: an exclusive advisory lock held for the life of a run.

Two processes writing one run folder corrupt it silently (a `prune --resume` beside a running prune
duplicated 25 trajectory steps; two `pyns train` interleaved two networks in one metrics.jsonl). Every
long-running command therefore takes `lock_folder(folder)` first:

- the lock is `flock(LOCK_EX)` on the file `.pyns-lock` inside the folder. The kernel releases it when
  the process ends in any way (exit, Ctrl-C, SIGKILL, a crash), so a lock is never stale and there is
  nothing to clean up;
- the holder writes its PID, host, command line and start time into the file, so a second process can
  say who holds the folder (`RunBusy`, exit 2 in the CLI) instead of a bare "locked";
- within one process the lock is re-entrant (a sweep cell locks its folder, then pyns.train.loop locks
  the same folder again); it is released when the outermost holder releases it;
- `wait=True` blocks until the holder is gone: sweeps and tiny samples lock per cell, so two workers on
  one folder share the cells, and a worker waits at the end for the cells the other one was training.

flock is per open file description, so the lock must not be taken by closing and reopening (which
POSIX `fcntl` record locks would silently release); a forked child forgets the parent's locks without
releasing them. Platforms without `fcntl` (Windows) run without locks.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pyns.errors import OutputError, RunError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_FILE", "RunBusy", "FolderLock", "lock_folder", "holds_lock", "folder_is_empty", "describe_holder"]

LOCK_FILE = ".pyns-lock"
# How long to wait for a new holder to write its name after it took the lock (it does so at once).
_HOLDER_WAIT_S = 0.5


class RunBusy(RunError):
    """The run folder is locked by another process; `holder` describes it as far as it is known."""

    def __init__(self, folder: Path, holder: dict):
        self.folder, self.holder = folder, holder
        super().__init__(f"{folder} is in use by another pyns process ({describe_holder(holder)})",
                         hint="wait for it to finish, or use another folder")


def describe_holder(holder: dict) -> str:
    if not holder.get("pid"):
        return "it has not said which"
    text = f"PID {holder['pid']}"
    if holder.get("host") and holder["host"] != socket.gethostname():
        text += f" on {holder['host']}"
    if holder.get("since"):
        text += f", since {holder['since']}"
    if holder.get("command"):
        text += f": {holder['command']}"
    return text


@dataclass
class _Held:
    fd: int
    count: int


_HELD: dict[str, _Held] = {}


def _forget_in_child() -> None:
    # The child shares the parent's open file descriptions: unlocking them would free the parent's lock.
    for held in _HELD.values():
        try:
            os.close(held.fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def _read_holder(fd: int) -> dict:
    deadline = time.monotonic() + _HOLDER_WAIT_S
    while True:
        try:
            raw = os.pread(fd, 4096, 0)
            holder = json.loads(raw.decode("utf-8", "replace")) if raw.strip() else {}
        except (OSError, ValueError):
            holder = {}
        if holder.get("pid") or time.monotonic() > deadline:
            return holder if isinstance(holder, dict) else {}
        time.sleep(0.02)  # the holder writes its name right after locking


class FolderLock:
    """A held lock on a run folder; `release()` (or leaving the `with` block) gives it back."""

    def __init__(self, key: str, folder: Path):
        self._key, self.folder = key, folder
        self._released = False

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        held = _HELD.get(self._key)
        if held is None:
            return
        held.count -= 1
        if held.count:
            return
        del _HELD[self._key]
        if held.fd < 0:  # pragma: no cover - no fcntl: nothing was locked
            return
        try:
            os.ftruncate(held.fd, 0)  # no stale name for the next holder's rivals to read
            fcntl.flock(held.fd, fcntl.LOCK_UN)
        finally:
            os.close(held.fd)

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_folder(folder: str | os.PathLike, *, wait: bool = False) -> FolderLock:
    """Take the exclusive lock of the existing folder `folder` (re-entrant within a process).

    Raises RunBusy when another process holds it and `wait` is False; with `wait` it blocks until the
    holder ends. OutputError when the lock file cannot be created (the folder is not writable).
    """
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _HELD:
        _HELD[key].count += 1
        return FolderLock(key, folder)
    if fcntl is None:  # pragma: no cover - Windows: no advisory locks
        _HELD[key] = _Held(-1, 1)
        return FolderLock(key, folder)
    path = folder / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as err:
        raise OutputError(f"cannot lock the run folder {folder}: {path}: {err.strerror or err}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise RunBusy(folder, _read_holder(fd)) from None
            fcntl.flock(fd, fcntl.LOCK_EX)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300],
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        except OSError as err:
            raise OutputError(f"cannot write the lock file {path}: {err.strerror or err}") from None
    except BaseException:
        os.close(fd)
        raise
    _HELD[key] = _Held(fd, 1)
    return FolderLock(key, folder)


def holds_lock(folder: str | os.PathLike) -> bool:
    """Whether this process holds the lock of `folder`."""
    return os.path.realpath(folder) in _HELD


def folder_is_empty(folder: str | os.PathLike) -> bool:
    """True for a missing folder or one holding nothing but its lock file."""
    folder = Path(folder)
    if not os.path.isdir(folder):
        return not os.path.lexists(folder)
    return not any(entry.name != LOCK_FILE for entry in folder.iterdir())
