"""The folder of a pruning run (pyns.neuralscale.prune.run): its files, its config.json, and reading it back.

The run folder (crash-safe: every file is written atomically or appended one line at a time):

    config.json        arch, its parameters, start widths, data set, PruneConfig, mode (checked on resume)
    arch.arch          the architecture's source text
    versions.json      pyns, torch, numpy, Python and platform versions
    trajectory.jsonl   one row per prune step: step (1, 2, ...), epoch (0-based, warm-up included),
                       minibatch (trained so far), params (τ), macs, widths {symbol: int} after the
                       step, loss (mean train loss of the step's Q minibatches), lr, filters (left:
                       output channels of the layers producing searchable widths, what the stop
                       fraction counts), prunable_units (left: channels the ranking chooses from, a
                       tied class's channel once), recording, time_s (training time so far);
                       fit_power_law uses the rows with recording = true. A step that had to keep the
                       first channels of a grouped conv also has approximate_layers.
    checkpoint.pt      model, optimizer, pruning state (widths, kept channel indices of every channel
                       space, counters), the importance sums, RNG, loader position and the rows so far;
                       written at the start, at most every checkpoint_interval_s seconds (after a prune
                       step or a warm-up epoch), at the end and on Ctrl-C
    summary.json       written at the end: why the run stopped, final widths and costs
    .pyns-lock         held (flock) by the process running the prune: a second one is refused (pyns.runlock)

`prepare_folder` locks the folder for the run and refuses a non-empty one unless the run resumes,
`run_config` is the config.json compared on resume, and `read_trajectory`, `load_run_config` and `load_run_arch` read a finished or running folder
back (for `pyns plot`, `pyns fit` and descent).
"""
from __future__ import annotations

import dataclasses
import os
import platform
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

import pyns
from pyns.arch import loads
from pyns.errors import RunError
from pyns.neuralscale.profile import TRAJECTORY_FILE, fit_power_law, read_trajectory
from pyns.neuralscale.prune.schedule import PruneConfig
from pyns.runfiles import load_config
from pyns.runlock import FolderLock, folder_is_empty, lock_folder
from pyns.safewrite import make_folder

__all__ = [
    "ARCH_FILE",
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "PROFILE_FILE",
    "fit_run",
    "RUN_KIND",
    "SUMMARY_FILE",
    "TRAJECTORY_FILE",
    "VERSIONS_FILE",
    "load_run_arch",
    "load_run_config",
    "prepare_folder",
    "read_trajectory",
    "run_config",
    "versions",
]

CONFIG_FILE = "config.json"
PROFILE_FILE = "profile.json"
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "summary.json"
ARCH_FILE = "arch.arch"
VERSIONS_FILE = "versions.json"
RUN_KIND = "prune"  # config.json's "kind": lets `pyns plot` and `pyns fit` recognise a pruning run


def versions() -> dict[str, str]:
    return {"pyns": pyns.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0], "platform": platform.platform()}


def run_config(arch, data: Mapping[str, Any], config: PruneConfig, mode: str,
               widths: Mapping[str, int]) -> dict[str, Any]:
    """The config.json of a pruning run (compared on resume)."""
    return {
        "kind": RUN_KIND,
        "arch": arch.name,
        "arch_file": arch.source.filename,
        "variant": arch.variant,
        "arch_params": dict(arch.params),
        "policy": arch.policy.name,
        "searchable": list(arch.searchable),
        "start_widths": dict(widths),
        "data": dict(data),
        "mode": mode,
        "seed": config.seed,
        "prune": dataclasses.asdict(config),
    }


def prepare_folder(out: Path, resume: bool) -> FolderLock:
    """Create the run folder and lock it for this process (a second process on it gets RunBusy, exit 2);
    the caller releases the lock when the run ends. A fresh run needs an empty folder."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise RunError(f"{out} exists and is not a folder; choose another --out")
    make_folder(out)
    lock = lock_folder(out)
    if not resume and not folder_is_empty(out):
        lock.release()
        raise RunError(f"the run folder {out} is not empty: pass --resume to continue the run in it, or "
                       "choose another folder")
    return lock


def load_run_config(run_dir: str | Path) -> dict[str, Any]:
    """config.json of a pruning run folder, or RunError naming what was expected."""
    config = load_config(run_dir, CONFIG_FILE)
    if config is None or config.get("kind") != RUN_KIND:
        raise RunError(f"{run_dir} is not a pyns pruning run: expected {Path(run_dir) / CONFIG_FILE} "
                       f"written by `pyns prune`")
    return config


def load_run_arch(run_dir: str | Path):
    """The Arch a pruning run used, from the source copy in the folder and the saved settings."""

    config = load_run_config(run_dir)
    path = Path(run_dir) / ARCH_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise RunError(f"cannot read the run's architecture {path}: {err}") from None
    return loads(text, filename=config.get("arch_file", ARCH_FILE), variant=config.get("variant"),
                 policy=config.get("policy"), **config.get("arch_params", {}))


def fit_run(run_dir: str | Path, out: str | Path | None = None, *, metric: str = "params") -> tuple[Path, list[str]]:
    """Fit the profile of a pruning run folder; returns its path and the fitter's warnings (e.g. the
    fall-back to uniform scaling when fewer than 6 rows were recorded)."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    rows = read_trajectory(run_dir)
    if not any(row.get("recording") for row in rows):
        raise RunError(f"{run_dir / TRAJECTORY_FILE} has no recorded rows yet (recording starts once every "
                       "searchable width has lost a unit); continue the pruning run with --resume")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        profile = fit_power_law(rows, arch=load_run_arch(run_dir), metric=metric,
                                dataset=config.get("data", {}).get("name"))
    profile.trajectory = str(run_dir / TRAJECTORY_FILE)
    path = Path(out) if out is not None else run_dir / PROFILE_FILE
    profile.save(path)
    return path, [str(w.message) for w in caught]
