"""Sweeps that reproduce the paper's Table 1 and Figures 4/5: every (method, budget, seed) trained and tabled.

A sweep trains one network per *cell* (method, budget, seed). Budgets follow the paper: the cost (params
by default) of the default network scaled uniformly by each width ratio. Methods:

    uniform      the uniformly scaled network that fits the budget
    morphnet     the configuration at 50% of the units of a pruning trajectory, scaled to the budget
    neuralscale  the widths of a fitted profile (a descent run's final profile) at the budget
    li           L1-norm filter pruning of the trained full network (cell `full`, one per seed) to the
                 budget, then fine-tuning (only for budgets below the full network)

Layout of the sweep folder:

    sweep.json                 the settings (a rerun with other recipe/data/arch settings is refused)
    cells/<method>_r<ratio>_seed<seed>/
        cell.json              what the cell trains: method, ratio, seed, budget, widths, how they were found
        result.json            written atomically when the cell is complete (accuracies, params, MACs,
                               latency); a cell holding a complete result.json is skipped on a rerun
        checkpoint.pt, metrics.jsonl, ...   pyns.train.loop's run files (an interrupted cell resumes from them)
    table.md, table.csv        Table 1: per method and budget, params, MACs, latency and accuracy
                               (best over epochs, as the paper reports, and final) as mean ± std over seeds
    fig4_accuracy_vs_params.png, fig5_accuracy_vs_latency.png

Each cell folder is locked while its cell trains (pyns.runlock): two sweeps started on one folder (two
workers, two machines on a shared file system) split the cells between them, and each waits at the end
for the cells the other is training, so no cell is trained twice. Cells run one after another in this
process by default; `executor="ray"` submits them as Ray tasks
(`ray.init(address=...)` when an address is given, else a local instance). The sweep folder and the data
must then be on a file system every Ray node sees.

Modules: pyns.sweep.plan (settings, budgets, cells and their widths), pyns.train.run (the training run of
one cell, shared with `pyns train`), pyns.sweep.report (Table 1 and Figures 4/5). This module runs the
cells, serially or on Ray, and the whole sweep.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pyns.sweep.progress import CellProgress
from pyns.data.arrays import derive_seed
from pyns.errors import BudgetError, PynsError, RunError
from pyns.neuralscale.baselines import li_finetune_recipe, li_prune
from pyns.runfiles import atomic_write_json, compare_configs, load_config
from pyns.runlock import RunBusy, describe_holder, lock_folder
from pyns.safewrite import make_folder
from pyns.scaling.profile import ScalingWarning
from pyns.sweep.plan import SWEEP_KIND, Cell, SweepConfig, plan_cells, sweep_warnings
from pyns.sweep.report import FIGURE_LATENCY, FIGURE_PARAMS, TABLE_CSV, TABLE_MD, aggregate, write_figures, write_table
from pyns.train.checkpoint import load_checkpoint
from pyns.train.loop import CHECKPOINT_FILE
from pyns.train.recipe import TrainRecipe
from pyns.train.run import ArchSpec, DataSpec, read_result, run_training

__all__ = [
    "ArchSpec",
    "DataSpec",
    "SweepConfig",
    "run_cell",
    "run_sweep",
    "CELL_FILE",
    "SWEEP_FILE",
]

CELL_FILE = "cell.json"
SWEEP_FILE = "sweep.json"
# A sweep may grow (more ratios, methods, seeds) or move (data root, device, executor) between runs
# without changing what its finished cells mean.
# The profile and trajectory are named by path, which may move; what they gave is checked per cell
# (its planned widths) instead.
# Latency is measured after training, so turning it on or off does not change a trained cell either.
# allow_fallback only permits cells that the plan would otherwise refuse; the planned widths are checked.
_EXTENDABLE = ("ratios", "methods", "seeds", "data.root", "device", "profile", "trajectory", "latency",
               "allow_fallback")


# ----------------------------------------------------------------------------------------------------
# Running one cell (also what a Ray task runs)
# ----------------------------------------------------------------------------------------------------


def _cell_spec(config: SweepConfig, cell: Cell, out: Path) -> dict[str, Any]:
    """A plain dict with everything a cell needs, so it can travel to a Ray worker."""
    return {"cell": cell.to_dict(), "folder": str(out / "cells" / cell.name),
            "source_folder": str(out / "cells" / cell.source) if cell.source else None,
            "arch": dataclasses.asdict(config.arch), "data": dataclasses.asdict(config.data),
            "recipe": dataclasses.asdict(config.recipe), "li_epochs": config.li_epochs, "li_lr": config.li_lr,
            "augment": config.augment, "device": config.device, "latency": config.latency}


_DATA_CACHE: dict[str, Any] = {}  # serial sweeps load the data set once, not once per cell


def _load_for(arch_spec: ArchSpec, data_spec: DataSpec) -> tuple[Any, Any, Any]:
    key = json.dumps([dataclasses.asdict(arch_spec), dataclasses.asdict(data_spec)], sort_keys=True, default=str)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # one sweep at a time: keep at most one data set in memory
        _DATA_CACHE[key] = arch_spec.load_for(data_spec)
    return _DATA_CACHE[key]


def run_cell(spec: Mapping[str, Any], progress: bool = False, wait: bool = True) -> dict[str, Any]:
    """Train one cell (or return its complete result); returns the result record plus `skipped`.

    The cell folder is locked while the cell trains (pyns.runlock), so two sweeps on one folder never
    train a cell twice. A cell another process is training returns {"busy": who} without `wait`; with
    `wait` this call blocks until that process ends, then returns its result (or trains the cell itself,
    resuming the checkpoint, if that process died first).
    """
    folder = Path(spec["folder"])
    done = read_result(folder)
    if done is not None:
        return {**done, "skipped": True}
    make_folder(folder)
    try:
        lock = lock_folder(folder, wait=wait)
    except RunBusy as busy:
        return {"busy": describe_holder(busy.holder), "skipped": False}
    with lock:
        done = read_result(folder)  # finished by the process this one waited for
        if done is not None:
            return {**done, "skipped": True}
        return _train_cell(spec, folder, progress)


def _train_cell(spec: Mapping[str, Any], folder: Path, progress: bool) -> dict[str, Any]:
    cell = Cell(**spec["cell"])
    arch_spec, data_spec = ArchSpec(**spec["arch"]), DataSpec(**spec["data"])
    arch, train_set, test_set = _load_for(arch_spec, data_spec)
    recipe = TrainRecipe(**spec["recipe"]).replace(seed=cell.seed)
    if arch.count(cell.widths).params != cell.cost["params"]:
        raise RunError(f"cell {cell.name}: its widths no longer cost what was planned; the architecture "
                       "changed since the sweep started")
    atomic_write_json(folder / CELL_FILE, cell.to_dict())
    info: dict[str, Any] = {"cell": cell.name, "method": cell.method, "ratio": cell.ratio, "seed": cell.seed,
                            "budget": {"metric": cell.metric, "value": cell.budget},
                            "data": {"name": data_spec.name, "options": data_spec.options}}

    if cell.method == "li":
        source = Path(spec["source_folder"])
        if read_result(source) is None:
            raise RunError(f"cell {cell.name} prunes the trained full network in {source}, which has not "
                           "finished; run the full cell first")
        full = arch.build(arch.defaults)
        full.load_state_dict(load_checkpoint(source / CHECKPOINT_FILE)["model"])
        pruned = li_prune(full, arch, **{cell.metric: cell.budget})
        if pruned.widths != cell.widths:
            raise RunError(f"cell {cell.name}: L1 pruning gave widths {pruned.widths}, planned {cell.widths}")
        model = pruned.model
        recipe = li_finetune_recipe(recipe, data_spec.name, epochs=spec["li_epochs"], lr=spec["li_lr"])
        info["li"] = {"pruned_from": str(source), "keep": pruned.keep, "dropped_layers": pruned.dropped_layers,
                      "finetune_epochs": recipe.epochs, "finetune_lr": recipe.lr}
    else:
        torch.manual_seed(derive_seed(cell.seed, "sweep-init"))  # each seed its own initial weights
        model = arch.build(cell.widths)

    resume = (folder / CHECKPOINT_FILE).exists()
    record = run_training(arch, model, train_set, test_set, recipe, folder, resume=resume, overwrite=not resume,
                          device=spec["device"], augment=spec["augment"], info=info, progress=progress,
                          latency=spec.get("latency", True))
    assert record is not None  # a sweep cell runs in one process
    over = record[cell.metric] > cell.budget
    if over:
        raise BudgetError(f"cell {cell.name}: {record[cell.metric]:,} {cell.metric} exceed the budget "
                          f"{cell.budget:,}; this is a pyns bug, please report it")
    return {**record, "skipped": False}


# ----------------------------------------------------------------------------------------------------
# The sweep
# ----------------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    out: Path
    records: list[dict[str, Any]]  # one per cell, in plan order
    rows: list[dict[str, Any]]  # the table rows
    notes: list[str]
    ran: int  # cells trained in this call
    skipped: int  # cells already complete
    warnings: list[str] = dataclasses.field(default_factory=list)  # "method at ratio R: ..." (table footnotes)

    @property
    def files(self) -> dict[str, Path]:
        return {"table_md": self.out / TABLE_MD, "table_csv": self.out / TABLE_CSV,
                "fig_params": self.out / FIGURE_PARAMS, "fig_latency": self.out / FIGURE_LATENCY}


def _check_sweep_folder(out: Path, config: SweepConfig) -> None:
    saved = load_config(out, SWEEP_FILE)
    current = config.to_dict()
    if saved is not None:
        if saved.get("kind") != SWEEP_KIND:
            raise RunError(f"{out} holds something other than a pyns sweep ({out / SWEEP_FILE})")
        differences = compare_configs(saved, current, ignore=_EXTENDABLE)
        if differences:
            raise RunError(f"the sweep in {out} was started with different settings: " + "; ".join(differences),
                           hint="rerun with the original settings (ratios, methods and seeds may grow), or "
                                "use another --out")
    make_folder(out)
    atomic_write_json(out / SWEEP_FILE, current)


def _check_planned(out: Path, cells: Sequence[Cell]) -> None:
    """A cell folder from an earlier run must have been planned with the same widths and budget."""
    for cell in cells:
        saved = load_config(out / "cells" / cell.name, CELL_FILE)
        if saved is None:
            continue
        for key in ("widths", "budget", "metric"):
            if compare_configs(saved.get(key), getattr(cell, key)):
                raise RunError(f"cell {cell.name} in {out} was trained with {key} {saved.get(key)}, now planned "
                               f"with {getattr(cell, key)} (did the profile or trajectory change?)",
                               hint="use another --out, or delete that cell's folder to retrain it")


def _describe(record: Mapping[str, Any]) -> str:
    text = (f"best {100 * record['best_test_acc']:.2f}% final {100 * record['final_test_acc']:.2f}%, "
            f"params {record['params']:,}")
    if record.get("latency_ms") is not None:
        text += f", {record['latency_ms']:.2f} ms/batch"
    return text


def _run_serial(specs: Sequence[dict[str, Any]], progress: bool, tracker: CellProgress) -> list[dict]:
    records: dict[str, dict] = {}
    busy = []  # cells another process is training: waited for once everything else is done

    def train(spec: dict[str, Any], wait: bool) -> bool:
        name = Path(spec["folder"]).name
        started = time.perf_counter()
        tracker.started()
        record = run_cell(spec, progress=progress, wait=wait)
        if record.get("busy"):
            tracker.unstarted()
            tracker.note(f"{name}: another process is training it ({record['busy']}); coming back to it at the end")
            return False
        state = "done before, skipped" if record["skipped"] else f"{time.perf_counter() - started:.1f}s"
        tracker.finished(f"{name}: {_describe(record)} ({state})", skipped=record["skipped"])
        records[spec["folder"]] = record
        return True

    for spec in specs:
        if not train(spec, wait=False):
            busy.append(spec)
    for spec in busy:
        tracker.note(f"{Path(spec['folder']).name}: waiting for the other process to finish it")
        train(spec, wait=True)
    return [records[spec["folder"]] for spec in specs]


def _import_ray():
    try:
        import ray  # local: Ray is optional, needed only by the ray executor
    except ImportError:
        raise PynsError("the ray executor needs Ray, which is not installed: pip install ray") from None
    return ray


def _run_ray(specs: Sequence[dict[str, Any]], address: str | None, cpus: float, gpus: float,
             tracker: CellProgress) -> list[dict]:
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(address=address) if address else ray.init()
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(run_cell)
    # First without waiting on cells another sweep is training; those come back as busy and are then
    # submitted again to wait for it.
    pending = {task.remote(dict(spec), False, False): spec for spec in specs}
    tracker.started(len(pending))  # submitted: Ray runs as many at once as its resources allow
    results: dict[str, dict] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            spec = pending.pop(ref)
            name = Path(spec["folder"]).name
            try:
                record = ray.get(ref)
            except Exception as err:  # a task's exception arrives wrapped in RayTaskError
                cause = getattr(err, "cause", None)
                for other in pending:
                    ray.cancel(other)
                if isinstance(cause, PynsError):
                    raise type(cause)(f"cell {name}: {cause.message}") from None
                raise RunError(f"cell {name} failed on Ray: {err}") from None
            if record.get("busy"):
                tracker.note(f"{name}: another process is training it ({record['busy']}); waiting for it")
                pending[task.remote(dict(spec), False, True)] = spec
                continue
            results[spec["folder"]] = record
            tracker.finished(f"{name}: {_describe(record)}" + (" (done before, skipped)" if record["skipped"] else ""),
                             skipped=record["skipped"])
    return [results[spec["folder"]] for spec in specs]


def run_sweep(config: SweepConfig, out_dir: str | Path, *, executor: str = "serial", ray_address: str | None = None,
              ray_cpus_per_cell: float = 1, ray_gpus_per_cell: float = 0, say: Callable[[str], None] | None = None,
              progress: bool = False, cell_bar: bool = False,
              warn: Callable[[str], None] | None = None) -> SweepResult:
    """Plan, train every cell not yet complete, then write the table and the figures. See the module doc.

    Every ScalingWarning of the plan (a fallback profile allowed by `allow_fallback`, an extrapolating
    solve, a profile fitted on another architecture) goes to `warn` before any training (default: issued
    as a ScalingWarning), is returned in SweepResult.warnings and is a footnote of the table.
    """
    if executor not in ("serial", "ray"):
        raise PynsError(f"the executor must be serial or ray, got {executor!r}")
    if executor == "ray":
        _import_ray()  # before any planning or training: a missing Ray is a set-up problem
    say = say or (lambda line: print(line, file=sys.stderr))
    out = Path(out_dir)
    if os.path.lexists(out) and not os.path.isdir(out):
        raise RunError(f"{out} exists and is not a folder; choose another --out")
    arch, train_set, test_set = _load_for(config.arch, config.data)  # fails fast on a missing data set
    for note in (*train_set.notes, *test_set.notes):  # e.g. unreadable images skipped: never silent
        say(f"note: {note}")
    cells, notes = plan_cells(arch, config)
    _check_sweep_folder(out, config)
    _check_planned(out, cells)
    for note in notes:
        say(f"note: {note}")
    by_cell = sweep_warnings(cells)
    flat = [f"{method} at ratio {ratio:g}: {note}" for (method, ratio), texts in by_cell.items() for note in texts]
    for text in flat:
        (warn or _issue)(text)
    specs = [_cell_spec(config, cell, out) for cell in cells]
    # li cells need their full network trained: they form a second wave.
    waves = [[s for s in specs if s["cell"]["method"] != "li"], [s for s in specs if s["cell"]["method"] == "li"]]
    by_folder: dict[str, dict] = {}
    # One bar over all cells (`cell_bar`), one line per finished cell through `say`.
    tracker = CellProgress(len(specs), 0, say, enabled=cell_bar)
    try:
        for wave in waves:
            if not wave:
                continue
            if executor == "ray":
                records = _run_ray(wave, ray_address, ray_cpus_per_cell, ray_gpus_per_cell, tracker)
            else:
                records = _run_serial(wave, progress, tracker)
            by_folder.update({spec["folder"]: record for spec, record in zip(wave, records)})
    finally:
        tracker.close()
    records = [by_folder[spec["folder"]] for spec in specs]
    rows = aggregate(records, config.methods, config.ratios, warnings=by_cell)
    write_table(rows, out)
    write_figures(rows, out)
    ran = sum(1 for r in records if not r["skipped"])
    return SweepResult(out, records, rows, notes, ran, len(records) - ran, flat)


def _issue(text: str) -> None:
    warnings.warn(text, ScalingWarning, stacklevel=3)
