"""Small, general helpers for run folders: crash-safe writes, JSONL logs, saved configs, RNG state.

Every long-running pyns command (train, prune, descent, tiny) keeps its state in a run folder that may be
interrupted at any moment (Ctrl-C, a killed job, a full disk). The rules these helpers enforce:

- a file is either the old complete version or the new complete version, never a mix (pyns.safewrite:
  temporary file in the same folder, fsync, `os.replace`; devices, FIFOs and symlinks are never replaced);
- a JSONL log tolerates a torn last line (the process died mid-append) when read back;
- a run folder remembers the configuration it was started with, and resuming with a different one is
  refused with a message that lists what differs;
- random-number-generator state is captured as plain Python values and tensors only, so checkpoints load
  with `torch.load(..., weights_only=True)` (no arbitrary unpickling).

torch is imported lazily so that importing this module stays cheap for the CLI's quick commands.
"""
from __future__ import annotations

import dataclasses
import enum
import json
import math
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pyns.errors import OutputError, RunError
# The one atomic writer lives in pyns.safewrite (it also guards devices, FIFOs and symlinks); these
# names are re-exported because every run-folder module imports them from here.
from pyns.safewrite import atomic_torch_save, atomic_write_bytes, atomic_write_text, atomic_writer, make_folder

__all__ = [
    "atomic_writer",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_torch_save",
    "append_jsonl",
    "read_jsonl",
    "write_jsonl",
    "to_jsonable",
    "json_text",
    "save_config",
    "load_config",
    "compare_configs",
    "check_config",
    "capture_rng_state",
    "restore_rng_state",
]

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------------------------------
# JSON conversion and JSONL logs
# ----------------------------------------------------------------------------------------------------


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write `obj` (made JSON-friendly by `to_jsonable`) to `path` atomically, with a trailing newline."""
    # Serialise before opening so that an unserialisable object never even creates the temporary file.
    atomic_write_text(path, json_text(obj, indent=indent))


def load_versioned_checkpoint(path: PathLike, kind: str, version: int, what: str) -> dict[str, Any]:
    """torch.load a checkpoint (tensors on the CPU, weights only) whose payload says `format: kind` and
    `version: version`; anything else — damaged, foreign or from another pyns version — is a RunError."""
    import torch  # local: defers torch for the CLI's quick commands

    target = Path(path)
    if not target.exists():
        raise RunError(f"there is no checkpoint at {target}")
    try:
        payload = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged or foreign files
        raise RunError(f"{target} could not be read as a pyns {what} checkpoint ({err})") from None
    if not isinstance(payload, dict) or payload.get("format") != kind:
        raise RunError(f"{target} is not a pyns {what} checkpoint")
    if payload.get("version") != version:
        raise RunError(f"{target} has checkpoint version {payload.get('version')}; this pyns reads "
                       f"version {version}")
    return payload


def to_jsonable(obj: Any) -> Any:
    """Turn dataclasses, paths, tuples, enums, sets, numpy and torch scalars into plain JSON values.

    Tuples become lists (JSON has no tuple), so compare configurations after this conversion.
    """
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        # Strict JSON has no NaN or Infinity (jq, JavaScript and most parsers reject them): null says
        # "no value" (an undefined correlation, an unmeasured time), which is what a non-finite number meant.
        return obj if math.isfinite(obj) else None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {str(key): to_jsonable(value) for key, value in obj.items()}
    if isinstance(obj, (set, frozenset)):
        return sorted(to_jsonable(item) for item in obj)
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(item) for item in obj]
    # numpy / torch scalars and 0-d arrays expose .item(); larger arrays expose .tolist().
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return to_jsonable(obj.item())
    raise TypeError(f"cannot store a {type(obj).__name__} in a JSON file")


def json_text(obj: Any, *, indent: int | None = 2) -> str:
    """`obj` as strict JSON text (non-finite floats as null, see `to_jsonable`) with a trailing newline: the
    one serialiser behind every JSON file pyns writes and every `--json` it prints."""
    return json.dumps(to_jsonable(obj), indent=indent, sort_keys=False, allow_nan=False) + "\n"


def append_jsonl(path: PathLike, record: Mapping[str, Any]) -> None:
    """Append one JSON object as one line to `path` (created if missing), flushed to disk.

    The line is written with a single `write` call so a crash can tear at most the last line, which
    `read_jsonl` then ignores.
    """
    line = json_text(record, indent=None)
    target = Path(path)
    if not os.path.isdir(target.parent):
        make_folder(target.parent, shown=target)
    try:
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as err:
        raise OutputError(f"cannot append to {target}: {err.strerror or err}") from None


def read_jsonl(path: PathLike, *, allow_torn_tail: bool = True) -> list[dict[str, Any]]:
    """Read a JSONL file. A torn last line (no newline, not valid JSON) is dropped when allowed.

    A malformed line anywhere else means the file was damaged or is not a pyns log: RunError.
    """
    target = Path(path)
    if not target.exists():
        return []
    text = target.read_text(encoding="utf-8")
    lines = text.split("\n")
    records: list[dict[str, Any]] = []
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            is_tail = index == len(lines) - 1  # no newline after it: the writer died mid-line
            if is_tail and allow_torn_tail:
                break
            raise RunError(f"line {index + 1} of {target} is not valid JSON; the log is damaged") from None
    return records


def write_jsonl(path: PathLike, records: Iterable[Mapping[str, Any]]) -> None:
    """Replace `path` atomically with one JSON line per record (e.g. rewriting a log on resume)."""
    text = "".join(json_text(record, indent=None) for record in records)
    atomic_write_text(path, text)


# ----------------------------------------------------------------------------------------------------
# Run-folder configuration
# ----------------------------------------------------------------------------------------------------


def save_config(run_dir: PathLike, config: Any, name: str = "config.json") -> Path:
    """Store `config` (dict or dataclass) as JSON in the run folder; returns the file's path."""
    target = Path(run_dir) / name
    atomic_write_json(target, config)
    return target


def load_config(run_dir: PathLike, name: str = "config.json") -> dict[str, Any] | None:
    """The configuration saved in the run folder, or None if there is none."""
    target = Path(run_dir) / name
    if not target.exists():
        return None
    try:
        return json.loads(target.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise RunError(f"{target} is not valid JSON; the run folder is damaged") from None


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    # JSON does not keep int vs float apart reliably (1 vs 1.0): numbers compare by value.
    return a == b


def compare_configs(saved: Any, current: Any, *, ignore: Sequence[str] = ()) -> list[str]:
    """Differences between two configurations, one readable line each, keys dotted (`recipe.lr`).

    Both sides go through `to_jsonable` first, so a tuple and a list with the same items are equal.
    `ignore` names keys (dotted paths or top-level names) whose change is allowed.
    """
    ignored = set(ignore)
    differences: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if prefix in ignored:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                where = f"{prefix}.{key}" if prefix else key
                if where in ignored:
                    continue
                if key not in a:
                    differences.append(f"{where}: not set before, now {json.dumps(b[key])}")
                elif key not in b:
                    differences.append(f"{where}: was {json.dumps(a[key])}, now not set")
                else:
                    walk(a[key], b[key], where)
            return
        if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
            if all(_same_value(x, y) for x, y in zip(a, b)):
                return
        elif _same_value(a, b):
            return
        differences.append(f"{prefix or '(config)'}: was {json.dumps(a)}, now {json.dumps(b)}")

    walk(to_jsonable(saved), to_jsonable(current), "")
    return differences


def check_config(
    run_dir: PathLike, config: Any, name: str = "config.json", *, ignore: Sequence[str] = ()
) -> Path:
    """Save `config` in a fresh run folder, or make sure it matches the one saved there before.

    Resuming a run with different settings would silently mix two experiments, so a mismatch raises
    RunError listing every difference. Keys in `ignore` may change; the saved file is then updated.
    """
    saved = load_config(run_dir, name)
    if saved is not None:
        differences = compare_configs(saved, config, ignore=ignore)
        if differences:
            listing = "; ".join(differences)
            raise RunError(
                f"the run folder {run_dir} was started with different settings ({listing})",
                hint="use the original settings to resume, or start the new run in another folder",
            )
    return save_config(run_dir, config, name)


# ----------------------------------------------------------------------------------------------------
# Random-number-generator state
# ----------------------------------------------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """The state of Python's, numpy's, torch's CPU and every CUDA generator, as plain values and tensors.

    Plain values (no numpy arrays) keep checkpoints loadable with `torch.load(weights_only=True)`.
    """
    import torch  # local: defers torch for the CLI's quick commands

    version, internal, gauss_next = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),  # uint32 words, widened
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # Only when CUDA is already in use: querying it would otherwise create a context on every GPU.
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back a state returned by `capture_rng_state` (CUDA generators as far as devices exist)."""
    import torch  # local: defers torch for the CLI's quick commands

    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    npst = state["numpy"]
    keys = np.asarray(npst["keys"].numpy() if hasattr(npst["keys"], "numpy") else npst["keys"], dtype=np.uint32)
    np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = list(state.get("cuda") or [])
    if cuda_states and torch.cuda.is_available():
        for index in range(min(len(cuda_states), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda_states[index].cpu(), index)
