"""The pruning loop (NeuralScale Algorithm 1) with physical shrinking, trajectories and exact resume.

`prune(arch, train_set, config, out_dir)` pre-trains the gated network for `warmup_epochs`, then every
`prune_every` minibatches ranks all units by their Taylor importance (pyns.neuralscale.prune.importance),
removes the `units_per_step` least important ones and, in the default `mode="shrink"`, rebuilds the
network smaller (pyns.neuralscale.prune.shrink), so training gets cheaper as it goes. A unit is one
channel of a class of searchable widths (widths joined by identity adds lose the same channel); a width
derived from them (an expansion `6 * in`, a squeeze-excite's reduced width) follows the new widths and
keeps its own most important channels. `mode="masked"` keeps the full network and zeroes gates instead:
the reference code's way, kept for the benchmark that measures what shrinking saves. Both modes prune
the same network (shortcuts pinned at the start widths: pyns.neuralscale.prune.structure) and remove
the same channels.

What the trajectory counts: `filters` are the output channels of every layer producing a searchable
width (the paper's "neurons (filters) of the network"; a tied width counts once per producing layer),
and the 95% stop (`stop_fraction`) counts filters removed; `prunable_units` are the channels the ranking
chooses from (a tied class's channel once). Recording starts once every searchable width has lost a
unit, widths that start at their floor (min_width or a declared `[min = N]`) excepted; a run that stops
without recording a row is an error that says why.

The run folder (config.json, trajectory.jsonl, checkpoint.pt, ...; crash-safe: every file is written
atomically or appended one line at a time) is described in pyns.neuralscale.prune.runfolder. The
checkpoint is written at the start, at most every `checkpoint_interval_s` seconds (after a prune step or
at the end of a warm-up epoch), always at the end, and on Ctrl-C (the first Ctrl-C finishes the
minibatch, saves and stops; a second stops at once; a KeyboardInterrupt raised by `callback` counts as
a first Ctrl-C).

Resuming (`resume=True`) reloads checkpoint.pt, rewrites trajectory.jsonl from the rows it holds (so a
row appended after the last checkpoint is dropped and recomputed) and continues; on the same machine and
thread count the trajectory is then identical to an uninterrupted run with the same seed.

τ and MACs always come from the cost engine at the current widths, never from counting modules. In
masked mode they describe the network the widths define, not the full-size module in memory.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from pyns.errors import RunError
from pyns.neuralscale.prune.defaults import plan_schedule
from pyns.neuralscale.prune.defaults import warn as warn_schedule
from pyns.neuralscale.prune.pruner import Pruner
from pyns.neuralscale.prune.runfolder import (
    ARCH_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    SUMMARY_FILE,
    VERSIONS_FILE,
    prepare_folder,
    run_config,
    versions,
)
from pyns.neuralscale.prune.schedule import PruneConfig
from pyns.neuralscale.prune.start_weights import resolve_start_weights
from pyns.neuralscale.prune.state import PruneResult, PruneState, load_prune_checkpoint
from pyns.runfiles import atomic_write_json, atomic_write_text, check_config
from pyns.train.distributed import parse_device

__all__ = [
    "MODES",
    "PruneResult",
    "PruneState",
    "load_prune_checkpoint",
    "prune",
]

MODES = ("shrink", "masked")
# Settings that may change between an interrupted run and its resumption without changing what was
# already computed: a longer epoch cap extends the run; the data root only says where the files are;
# how often checkpoints are written changes no result. "schedule" holds what the settings imply (the
# bound on steps moves with max_epochs), not settings.
_RESUMABLE_CHANGES = ("prune.max_epochs", "data.root", "prune.checkpoint_interval_s", "schedule")


def _resolve_weights(arch, weights, start: Mapping[str, int]):
    if weights is None:
        return None
    changed = [f"{k}={v} (default {arch.defaults[k]})" for k, v in start.items() if v != arch.defaults[k]]
    if changed:
        raise RunError("pruning from given weights starts at the default widths, but the start widths set "
                       + ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else "")
                       + ": drop --widths/--ratio (the run prunes from there)")
    return resolve_start_weights(weights)


def prune(arch, train_set, config: PruneConfig, out_dir: str | Path, *,
          mode: str = "shrink", device: str | torch.device = "cpu", resume: bool = False,
          widths: Mapping[str, int] | None = None, data: Mapping[str, Any] | None = None,
          progress: bool = False, callback: Callable[[PruneState, Any], None] | None = None,
          weights=None) -> PruneResult:
    """Run Algorithm 1 on `arch` (a pyns.arch.Arch) with `train_set` (a pyns.data.datasets.ImageDataset).

    `widths` are the start widths (default: the arch's defaults); `data` describes the data set for
    config.json (default: its name and size). `callback(state, model)` runs after every minibatch, after
    the prune step if one was due (tests use it to inspect the model or interrupt the run). `weights`
    starts the network from given weights instead of a random init (the default widths only): the module
    the arch was imported from, a model spec or a weights file (pyns.neuralscale.prune.start_weights).
    Returns the
    trajectory and where the run ended; see pyns.neuralscale.prune.runfolder for the run folder. Raises RunError for
    a non-empty folder without `resume`, or a resume with other settings.
    """
    if mode not in MODES:
        raise RunError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    start = arch.widths(widths)
    start_weights = _resolve_weights(arch, weights, start)
    if train_set.channels != arch.network.in_channels or train_set.resolution != arch.resolution:
        raise RunError(f"{arch.name} takes {arch.network.in_channels}x{arch.resolution}x{arch.resolution} "
                       f"images, the data set has {train_set.channels}x{train_set.resolution}x"
                       f"{train_set.resolution}; load it with resolution= and channels= to match")
    # Unset units_per_step / prune_every are derived from the network and the data set here, and a run
    # that cannot record enough points for a fit says so now, before any training (prune/defaults.py).
    plan = plan_schedule(arch, config, start, len(train_set))
    warn_schedule(plan)
    config = plan.config
    out = Path(out_dir)
    with prepare_folder(out, resume):  # the folder is this process's until the run ends (pyns.runlock)
        data_info = dict(data) if data is not None else {"name": train_set.name}
        data_info.setdefault("num_samples", len(train_set))
        data_info.setdefault("num_classes", train_set.num_classes)
        saved_config = {**run_config(arch, data_info, config, mode, start), "schedule": plan.to_dict()}
        if start_weights is not None:
            saved_config["weights"] = start_weights.info
        check_config(out, saved_config, CONFIG_FILE, ignore=_RESUMABLE_CHANGES)
        atomic_write_text(out / ARCH_FILE, arch.source.text)
        atomic_write_json(out / VERSIONS_FILE, versions())

        pruner = Pruner(arch, train_set, config, mode, parse_device(device), out, start, progress, callback,
                         start_weights)
        checkpoint = out / CHECKPOINT_FILE
        if resume and checkpoint.exists():
            pruner.restore(checkpoint)
        else:
            pruner.start_fresh()
        if not pruner.state.done:
            pruner.run()
        s = pruner.state
        params, macs = pruner.net.count(s.widths)
        recorded = sum(1 for r in pruner.rows if r["recording"])
        summary = {"done": s.done, "stop_reason": s.stop_reason, "steps": s.step, "epochs": s.epoch,
                   "minibatches": s.minibatches, "total_filters": s.total_filters, "filters": pruner._filters(),
                   "removed_units": s.removed_units, "total_units": s.total_units, "recorded_rows": recorded,
                   "widths": s.widths, "params": params, "macs": macs, "seconds": round(s.seconds, 3), "mode": mode}
        atomic_write_json(out / SUMMARY_FILE, summary)
        if s.done and recorded == 0:
            raise RunError(pruner.nothing_recorded())
        return PruneResult(out, pruner.rows, dict(s.widths), params, macs, s.done, s.stop_reason, s.step,
                           s.seconds, plan)
