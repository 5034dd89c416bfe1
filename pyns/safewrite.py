"""Writing output files so that nothing but the named file can change: the package's one atomic writer.

Every file pyns writes (run-folder state, profiles, resolved .arch files, figures, tables) goes through
`atomic_writer`, which looks at the target before touching it:

- a regular file (or a name that does not exist yet) is written to a temporary file in the same folder,
  fsynced, then `os.replace`d over the target: a reader sees the old complete file or the new complete
  one, never a mix (atomic on POSIX when source and target share a file system, hence "same folder").
  An existing file keeps its permission bits; a new one gets 0666 minus the umask (0644 usually), as
  with any other program, not mkstemp's 0600;
- a symbolic link is written *through*: the file it points to is replaced atomically (in its own
  folder), the link stays a link;
- a character device or a FIFO (`/dev/null`, `/dev/stdout`, a named pipe) is written to directly, without
  a rename, the way a shell's `>` would: replacing it would destroy a system file. A FIFO nobody reads
  is refused instead of blocking forever;
- anything else (a folder, a block device, a socket) is refused.

Every failure is an `OutputError` (exit status 2 in the CLI) naming the path and the reason, and no
temporary file is left behind. `check_writable_file` and `check_writable_folder` run the same checks
without writing, so a command can refuse an unwritable `--out` before hours of training instead of after.
"""
from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pyns.errors import OutputError

__all__ = [
    "atomic_writer",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
    "check_writable_file",
    "check_writable_folder",
    "make_folder",
]

PathLike = str | os.PathLike

# The longest file name most POSIX file systems accept (ext4, xfs, btrfs, tmpfs); used only when the
# file system cannot be asked (os.pathconf missing or failing).
_DEFAULT_NAME_MAX = 255


def _reason(err: OSError) -> str:
    return err.strerror or str(err)


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return _DEFAULT_NAME_MAX


def _nearest_existing(path: Path) -> Path:
    """The longest prefix of `path` that exists (at worst the current folder or the root)."""
    probe = path
    while not os.path.lexists(probe):
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    return probe


def _check_names(path: Path, shown: PathLike) -> None:
    """Refuse a path whose missing components are longer than the file system allows."""
    base = _nearest_existing(path)
    limit = _name_max(base if os.path.isdir(base) else base.parent)
    for part in path.parts[len(base.parts):]:
        if len(os.fsencode(part)) > limit:
            raise OutputError(f"cannot write {shown}: the name `{part[:40]}...` is {len(os.fsencode(part))} "
                              f"bytes long, more than the {limit} this file system allows")


def _folder_problem(folder: Path, shown: PathLike) -> None:
    """Refuse when the folder that would hold `shown` cannot exist: a file is in the way."""
    base = _nearest_existing(folder)
    try:
        info = os.stat(base)
    except OSError as err:
        raise OutputError(f"cannot write {shown}: {base}: {_reason(err)}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise OutputError(f"cannot write {shown}: {base} is a file, not a folder")


def _probe(folder: Path, shown: PathLike) -> None:
    """Create and delete a temporary file in `folder` (or its nearest existing ancestor): the only test
    that sees read-only mounts, /proc, immutable folders and quotas alike (root passes every access())."""
    base = _nearest_existing(folder)
    probe = base / f".pyns-probe.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as err:
        raise OutputError(f"cannot write {shown}: {base} does not accept new files ({_reason(err)})") from None
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass


def _classify(target: Path, shown: PathLike) -> tuple[str, Path, os.stat_result | None]:
    """(how to write, where, the existing file's status): "replace" a regular or missing file at the
    path (symlinks resolved), or write "direct"ly to a character device or FIFO."""
    try:
        link = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):  # a missing file, or a file in the way: checked later
        return "replace", target, None
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            _check_names(target, shown)  # says which name is too long, and by how much
        raise OutputError(f"cannot write {shown}: {_reason(err)}") from None
    real = target
    info = link
    if stat.S_ISLNK(link.st_mode):
        try:
            info = os.stat(target)
        except FileNotFoundError:
            # A dangling link: create the file it names, so the link starts working.
            return "replace", Path(os.path.realpath(target)), None
        except OSError as err:
            raise OutputError(f"cannot write {shown}: {_reason(err)}") from None
        if stat.S_ISREG(info.st_mode):
            real = Path(os.path.realpath(target))
    mode = info.st_mode
    if stat.S_ISREG(mode):
        return "replace", real, info
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return "direct", target, info  # open() follows the link itself (right for /proc magic links too)
    what = ("a folder; give a file name" if stat.S_ISDIR(mode) else
            "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a file")
    raise OutputError(f"cannot write {shown}: it is {what}")


def check_writable_file(path: PathLike) -> None:
    """Raise OutputError unless `atomic_writer(path)` can be expected to succeed (nothing is written)."""
    target = Path(path)
    how, real, _ = _classify(target, path)
    if how == "direct":
        return  # devices and FIFOs are opened when written; a reader may not be there yet
    _check_names(real, path)
    _folder_problem(real.parent, path)
    _probe(real.parent, path)


def check_writable_folder(path: PathLike) -> None:
    """Raise OutputError unless `path` is, or can be created as, a folder that accepts new files."""
    folder = Path(path)
    if os.path.lexists(folder):
        try:
            info = os.stat(folder)
        except OSError as err:
            raise OutputError(f"cannot use {path} as a folder: {_reason(err)}") from None
        if not stat.S_ISDIR(info.st_mode):
            raise OutputError(f"cannot use {path} as a folder: it exists and is not a folder")
    else:
        _check_names(folder, path)
        _folder_problem(folder, path)
    _probe(folder, path)


def make_folder(path: PathLike, *, shown: PathLike | None = None) -> Path:
    """`mkdir -p path`, every failure an OutputError naming the path (or `shown`, the file the folder is
    for) and the reason."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        if shown is None:
            check_writable_folder(folder)  # names a file in the way, a too-long name, ... when it can
        else:
            _check_names(folder, shown)
            _folder_problem(folder, shown)
            _probe(folder, shown)
        raise OutputError(f"cannot create the folder {folder} for {shown or path}: {_reason(err)}") from None
    return folder


def _temp_path(target: Path) -> Path:
    """A unique hidden name beside `target`, short enough for the file system even when `target` is not."""
    suffix = f".{os.getpid()}.{secrets.token_hex(4)}.tmp"
    room = _name_max(target.parent) - len(suffix) - 1
    stem = os.fsdecode(os.fsencode(target.name)[:max(room, 1)]) if room > 0 else "pyns"
    return target.with_name(f".{stem}{suffix}")


@contextmanager
def _direct_writer(target: Path, info: os.stat_result, mode: str, encoding: str | None,
                   shown: PathLike) -> Iterator[IO[Any]]:
    fifo = stat.S_ISFIFO(info.st_mode)
    try:
        # O_NONBLOCK on a FIFO: fail at once (ENXIO) when no process reads it, instead of hanging.
        fd = os.open(target, os.O_WRONLY | (os.O_NONBLOCK if fifo else 0))
    except OSError as err:
        if fifo and err.errno == errno.ENXIO:
            raise OutputError(f"cannot write {shown}: it is a FIFO and no process is reading it") from None
        raise OutputError(f"cannot write {shown}: {_reason(err)}") from None
    if fifo:
        os.set_blocking(fd, True)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            yield handle
            handle.flush()
    except OSError as err:
        raise OutputError(f"cannot write {shown}: {_reason(err)}") from None


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk (POSIX only)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (e.g. certain network mounts) refuse fsync on directories
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: PathLike, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open `path` for writing as the module doc describes; on clean exit the new content is in place, on
    any exception (KeyboardInterrupt included) the previous version of a regular file is untouched and
    no temporary file remains. `mode` is "wb" or "w" (text, UTF-8 unless `encoding` says otherwise)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer supports modes 'w' and 'wb', not {mode!r}")
    text_encoding = (encoding or "utf-8") if mode == "w" else None
    how, target, info = _classify(Path(path), path)
    if how == "direct":
        with _direct_writer(target, info, mode, text_encoding, path) as handle:
            yield handle
        return
    _check_names(target, path)
    if not os.path.isdir(target.parent):
        make_folder(target.parent, shown=path)
    tmp = _temp_path(target)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides, as usual
    except OSError as err:
        _folder_problem(target.parent, path)
        raise OutputError(f"cannot write {path}: {target.parent} does not accept new files "
                          f"({_reason(err)})") from None
    try:
        if info is not None:
            os.chmod(tmp, stat.S_IMODE(info.st_mode))  # an existing file keeps its permissions
        with os.fdopen(fd, mode, encoding=text_encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(err, OSError):
            raise OutputError(f"cannot write {path}: {_reason(err)}") from None
        raise
    _fsync_dir(target.parent)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_writer(path, "w") as handle:
        handle.write(text)


class _WriteErrors:
    """A binary file wrapper that remembers the OSError of a failed write: torch.save reports one as a
    RuntimeError, which would hide "No space left on device" behind a traceback."""

    def __init__(self, handle: IO[bytes]):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """`torch.save(obj, path)` atomically: an interrupted save keeps the previous file intact."""
    import torch  # local: defers torch for the CLI's quick commands

    with atomic_writer(path, "wb") as handle:
        recorder = _WriteErrors(handle)
        try:
            torch.save(obj, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None  # atomic_writer turns it into an OutputError
            raise
