"""Fitting your own tiny formula (SPEC §6): sample (r, d, w), train every model, fit GPs on the Pareto front.

`sample_tiny` draws (r, d, w) uniformly in a box (the paper's [0.35, 2.8]), keeps the first `n` draws whose
MACs lie in the budget band [lo, hi] x C0 (C0 = MACs of the default network; the cost engine decides), and
trains each with a short recipe. `fit_sample_dir` (pyns.tinynet.fit) takes the top fraction (20%) of the
trained models by non-dominated sorting on (accuracy up, MACs down), reports the Spearman correlation of
r, d and w with MACs on that set, fits the GPs c -> r and c -> d, and writes a formula file
`pyns tiny --formula` reads.

Run folder (every file written atomically; a killed run resumes where it stopped):

    config.json              kind "tiny-sample", the arch (source hash), sampling settings, data, recipe;
                             resuming with different settings is refused
    cells.json               the planned models: index, r, d, w, resolution, repeats, widths, params, MACs, c
    cells/00007/train/       the cell's `pyns.train.loop` run (checkpoint.pt resumes mid-training)
    cells/00007/result.json  the plan plus final / best test accuracy: present = cell done, skipped on resume
    fit.json, formula.json   written by `fit_sample_dir` (pyns.tinynet.fit)

Each cell folder is locked while its cell trains (pyns.runlock): two samplers started on one run folder
split the cells and wait at the end for the ones the other is training; no cell is trained twice.

Executors: cells run one after another in this process ("serial"), or as Ray tasks ("ray"; `pip install
ray`). Ray workers write into the run folder themselves, so on a multi-machine cluster it must be on a
file system every worker mounts at the same path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from pyns.arch import Arch, loads
from pyns.errors import BudgetError, DSLError, PynsError, RunError
from pyns.runfiles import atomic_write_json, atomic_write_text, check_config, load_config
from pyns.runlock import RunBusy, folder_is_empty, lock_folder
from pyns.safewrite import make_folder
from pyns.tinynet.cost import CostPath, stage_repeats, with_policy
from pyns.tinynet.formula import sample_multipliers
from pyns.tinynet.options import DEFAULT_BAND, DEFAULT_RANGE, EXECUTOR_ALIASES, EXECUTORS
from pyns.train.recipe import TrainRecipe

__all__ = [
    "KIND", "Cell", "CellResult", "SampleJob", "EXECUTORS", "plan_cells", "short_recipe", "sample_tiny",
    "run_cell", "cell_dir", "read_cell_result",
]

KIND = "tiny-sample"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
CELLS_FILE = "cells.json"
CELLS_DIR = "cells"
RESULT_FILE = "result.json"
TRAIN_DIR = "train"
# Draws allowed per wanted model before giving up: in the paper's box about one draw in ten lands in the
# band; a thousand covers bands a hundred times narrower before calling the settings hopeless.
MAX_DRAWS_PER_MODEL = 1000
_FIRST_CHUNK = 256            # draws evaluated before checking whether enough landed in the band


@dataclass(frozen=True)
class Cell:
    """One sampled model: its multipliers and the exact network they give."""

    index: int
    r: float
    d: float
    w: float
    resolution: int
    repeats: tuple[int, ...]  # top-level repeat counts (stages) after depth scaling
    widths: dict[str, int]
    params: int
    macs: int
    c: float                  # macs / C0

    @property
    def name(self) -> str:
        return f"{self.index:05d}"

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["repeats"] = list(self.repeats)
        out["name"] = self.name
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cell:
        try:
            return cls(index=int(data["index"]), r=float(data["r"]), d=float(data["d"]), w=float(data["w"]),
                       resolution=int(data["resolution"]), repeats=tuple(int(v) for v in data["repeats"]),
                       widths={str(k): int(v) for k, v in data["widths"].items()}, params=int(data["params"]),
                       macs=int(data["macs"]), c=float(data["c"]))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise RunError(f"a cell record is damaged ({type(err).__name__}: {err})") from None


@dataclass(frozen=True)
class CellResult:
    """A trained cell: the plan and its test accuracy (`final`: after the last epoch; `best`: the maximum
    over epochs, as the papers report)."""

    cell: Cell
    final_test_acc: float
    best_test_acc: float
    epochs: int
    seconds: float

    def accuracy(self, which: str = "final") -> float:
        return self.final_test_acc if which == "final" else self.best_test_acc


# ---- planning ----------------------------------------------------------------------------------------


def _parse_pair(pair: Sequence[float], what: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in pair)
    except (TypeError, ValueError):
        raise BudgetError(f"{what} must be two numbers lo:hi") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise BudgetError(f"{what} must satisfy 0 < lo < hi, got {lo:g}:{hi:g}")
    return lo, hi


def plan_cells(arch: Arch, n: int, value_range: Sequence[float] = DEFAULT_RANGE,
               band: Sequence[float] = DEFAULT_BAND, seed: int = 0) -> tuple[list[Cell], int]:
    """The first `n` draws of (r, d, w) ~ U(range)³ whose MACs lie in band x C0, and the draws it took.

    Draws come from `sample_multipliers(total, lo, hi, seed)`; numpy's generator yields the same prefix for
    any total, so the plan depends only on (arch, n, range, band, seed). A draw that cannot be built (an
    input so small a layer's output vanishes) counts as outside the band.
    """
    if int(n) != n or n < 1:
        raise BudgetError(f"the number of models must be a whole number >= 1, got {n}")
    lo, hi = _parse_pair(value_range, "the sampling range")
    band_lo, band_hi = _parse_pair(band, "the budget band")
    path = CostPath(arch)
    base = path.arch.count()
    macs_lo, macs_hi = band_lo * base.macs, band_hi * base.macs
    limit = int(n) * MAX_DRAWS_PER_MODEL
    cells: list[Cell] = []
    done = 0
    total = min(limit, max(_FIRST_CHUNK, 4 * int(n)))
    while len(cells) < n:
        draws = sample_multipliers(total, lo, hi, seed)  # [total, 3]: r, d, w; a prefix of any longer draw
        for r, d, w in draws[done:]:
            done += 1
            r, d, w = float(r), float(d), float(w)
            if path.resolution(r) < 1:
                continue
            try:
                params, macs, widths, resolution = path.count(r, d, w)
            except DSLError:
                continue  # e.g. a pooling layer left with no pixels at a tiny resolution
            if macs_lo <= macs <= macs_hi:
                repeats = tuple(s.repeats for s in stage_repeats(path.arch, d))
                cells.append(Cell(len(cells), r, d, w, resolution, repeats, widths, params, macs,
                                  macs / base.macs))
                if len(cells) == n:
                    break
        if len(cells) < n:
            if total >= limit:
                raise BudgetError(f"only {len(cells)} of {n} sampled models fell in the budget band "
                                  f"{band_lo:g}..{band_hi:g} x {base.macs:,} MACs after {done:,} draws; widen "
                                  "--range or --budget")
            total = min(limit, 2 * total)
    return cells, done


def short_recipe(epochs: int = 10, *, lr: float = 0.1, batch_size: int = 128, seed: int = 0,
                 **overrides: Any):
    """The sampling recipe: SPEC §5's SGD (momentum 0.5, weight decay 5e-4) for a few epochs, the learning
    rate divided by 10 at half and three quarters of the run (when it is long enough to have them)."""
    milestones = tuple(sorted({m for m in (epochs // 2, (3 * epochs) // 4) if 1 <= m < epochs}))
    return TrainRecipe(lr=lr, batch_size=batch_size, epochs=epochs, milestones=milestones, seed=seed,
                       **overrides)


# ---- one cell ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleJob:
    """Everything a worker needs to train a cell, as plain values (picklable for Ray)."""

    run_dir: str
    arch_text: str
    arch_filename: str
    variant: str | None
    policy: str
    params: dict[str, float]
    data: str
    root: str | None
    recipe: dict[str, Any]
    device: str | None = None
    data_options: tuple[tuple[str, Any], ...] = ()  # reader options (--data-option), sorted (k, v) pairs

    def arch(self) -> Arch:
        return loads(self.arch_text, filename=self.arch_filename, variant=self.variant, policy=self.policy,
                     **self.params)


def cell_dir(run_dir: str | Path, cell: Cell) -> Path:
    return Path(run_dir) / CELLS_DIR / cell.name


@lru_cache(maxsize=4)  # consecutive cells often share a resolution; a few splits in memory at most
def _dataset(name: str, root: str | None, split: str, resolution: int, channels: int,
             options: tuple[tuple[str, Any], ...] = ()):
    from pyns.data.datasets import load_dataset  # local: defers torch; this module is torch-free

    return load_dataset(name, root, split, resolution=resolution, channels=channels, **dict(options))


def run_cell(job: SampleJob, cell: Cell, *, progress: bool = False, wait: bool = True) -> CellResult | None:
    """Train one cell (resuming its checkpoint if there is one) and write its result.json.

    The cell folder is locked while it trains (pyns.runlock), so two samplers on one run folder never
    train a cell twice: a cell another process holds returns None without `wait`; with `wait` this
    call blocks until that process ends and returns its result (or trains the cell, resuming the
    checkpoint, when that process died first).
    """
    folder = cell_dir(job.run_dir, cell)
    done = read_cell_result(folder, cell)
    if done is not None:
        return done
    make_folder(folder)
    try:
        lock = lock_folder(folder, wait=wait)
    except RunBusy:
        return None
    with lock:
        done = read_cell_result(folder, cell)  # finished by the process this one waited for
        return done if done is not None else _train_cell(job, cell, folder, progress)


def _train_cell(job: SampleJob, cell: Cell, folder: Path, progress: bool) -> CellResult:
    # local: defers torch, which this module (and `pyns tiny` solving) does without
    import torch

    from pyns.data.arrays import derive_seed
    from pyns.train.loop import CHECKPOINT_FILE, make_loaders, train

    arch = job.arch()
    started = time.perf_counter()
    # The initial weights come from a seed of their own per cell. Unseeded, they came from whatever state
    # the global generator was in: torch seeds it randomly at start-up, so the first cell a process
    # trained differed on every run, and every later cell depended on which cell had run before it
    # (after a kill and rerun, other cells come first).
    torch.manual_seed(derive_seed(int(job.recipe["seed"]), "tiny-init", cell.index))
    model = arch.build(cell.widths, depth=cell.d, resolution=cell.resolution)
    built = sum(p.numel() for p in model.parameters())
    if built != cell.params:
        raise RunError(f"cell {cell.name}: the built model has {built:,} parameters, the plan says "
                       f"{cell.params:,}; was the .arch file changed?")
    channels = arch.network.in_channels
    train_set = _dataset(job.data, job.root, "train", cell.resolution, channels, job.data_options)
    test_set = _dataset(job.data, job.root, "test", cell.resolution, channels, job.data_options)
    recipe = TrainRecipe(**{**job.recipe, "milestones": tuple(job.recipe["milestones"])})
    device = torch.device(job.device) if job.device else None
    train_loader, test_loader = make_loaders(train_set, test_set, recipe, device=device)
    resume = (folder / TRAIN_DIR / CHECKPOINT_FILE).exists()
    outcome = train(model, train_loader, test_loader, recipe, out_dir=folder / TRAIN_DIR, resume=resume,
                    overwrite=not resume, progress=progress)
    result = CellResult(cell, float(outcome.final_test_acc), float(outcome.best_test_acc), int(outcome.epochs),
                        time.perf_counter() - started)
    atomic_write_json(folder / RESULT_FILE, {
        **cell.to_dict(), "final_test_acc": result.final_test_acc, "best_test_acc": result.best_test_acc,
        "best_test_acc_note": "maximum test accuracy over epochs, as the paper reports",
        "epochs": result.epochs, "seconds": result.seconds,
    })
    return result


def read_cell_result(folder: Path, cell: Cell) -> CellResult | None:
    path = folder / RESULT_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return CellResult(Cell.from_dict(data), float(data["final_test_acc"]), float(data["best_test_acc"]),
                          int(data["epochs"]),
                          math.nan if data.get("seconds") is None else float(data["seconds"]))  # null: unmeasured
    except (ValueError, KeyError, TypeError) as err:
        raise RunError(f"{path} is damaged ({type(err).__name__}: {err}); delete it to retrain the cell") from None


# ---- executors ---------------------------------------------------------------------------------------


def _run_local(job: SampleJob, cells: list[Cell], report: Callable[[CellResult], None],
               log: Callable[[str], None]) -> None:
    busy = []  # cells another process is training: waited for once everything else is done
    for cell in cells:
        result = run_cell(job, cell, wait=False)
        if result is None:
            log(f"cell {cell.name}: another process is training it; coming back to it at the end")
            busy.append(cell)
        else:
            report(result)
    for cell in busy:
        log(f"cell {cell.name}: waiting for the other process to finish it")
        report(run_cell(job, cell, wait=True))


def _ray_cell(job: SampleJob, cell: Cell, wait: bool) -> CellResult | None:  # module level: Ray pickles it by name
    return run_cell(job, cell, wait=wait)


def _require_ray():
    try:
        import ray  # local: Ray is optional, needed only by --executor ray
    except ImportError:
        raise PynsError("--executor ray needs Ray, which is not installed: pip install ray "
                        "(or pip install 'pyns[ray]'), or use --executor serial") from None
    return ray


def _run_ray(job: SampleJob, cells: list[Cell], report: Callable[[CellResult], None],
             address: str | None, gpus_per_cell: float) -> None:
    ray = _require_ray()
    if not ray.is_initialized():
        ray.init(address=address)  # None: start a local Ray instance on this machine
    task = ray.remote(num_cpus=1, num_gpus=gpus_per_cell)(_ray_cell)
    cell_of = {}
    for cell in cells:
        cell_of[task.remote(job, cell, False)] = cell
    pending = list(cell_of)
    try:
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            for ref in finished:
                result = ray.get(ref)
                if result is None:  # another sampler holds the cell: wait for it in a task of its own
                    again = task.remote(job, cell_of[ref], True)
                    cell_of[again] = cell_of[ref]
                    pending.append(again)
                else:
                    report(result)
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise


# ---- the sampling run --------------------------------------------------------------------------------


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _fit_classes(arch: Arch, data: str, root: str | None, explicit: bool,
                 options: Mapping[str, Any] | None = None) -> Arch:
    """Give the classifier as many outputs as the data set has classes, unless `classes` was set explicitly."""
    from pyns.data.datasets import load_dataset  # local: defers torch; this module is torch-free

    test = load_dataset(data, root, "test", resolution=arch.resolution, channels=arch.network.in_channels,
                        **dict(options or {}))
    if "classes" in arch.network.params and not explicit and arch.network.params["classes"] != test.num_classes:
        arch = Arch(arch.source, variant=arch.variant, policy=arch.policy.name,
                    params={**arch.params, "classes": test.num_classes})
    return arch


def sample_tiny(arch: Arch, out_dir: str | Path, *, data: str, root: str | Path | None = None, n: int = 100,
                value_range: Sequence[float] = DEFAULT_RANGE, band: Sequence[float] = DEFAULT_BAND,
                seed: int = 0, epochs: int = 10, lr: float = 0.1, batch_size: int = 128,
                policy: str | None = "tinynet", executor: str = "serial", ray_address: str | None = None,
                gpus_per_cell: float | None = None, device: str | None = None,
                log: Callable[[str], None] | None = None,
                data_options: Mapping[str, Any] | None = None) -> list[CellResult]:
    """Plan, train and record `n` sampled models in `out_dir` (see the module doc); returns every finished
    cell (including those done by an earlier, interrupted run). `policy=None` keeps the arch's own.

    The classifier is sized to the data set's classes unless the Arch was loaded with `classes=...`.
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    if executor in EXECUTOR_ALIASES:
        log(f"pyns: note: executor `{executor}` is now called `{EXECUTOR_ALIASES[executor]}` (as in `pyns sweep`)")
        executor = EXECUTOR_ALIASES[executor]
    if executor not in EXECUTORS:
        raise PynsError(f"unknown executor `{executor}`; choose one of {', '.join(EXECUTORS)}")
    if executor == "ray":
        _require_ray()  # before any work, not after planning and loading data
    root_text = None if root is None else str(root)
    arch = with_policy(arch, policy) if policy else arch
    options = dict(data_options or {})
    arch = _fit_classes(arch, data, root_text, explicit="classes" in arch.params, options=options)
    recipe = short_recipe(epochs, lr=lr, batch_size=batch_size, seed=seed)
    base = arch.count()
    folder = Path(out_dir)
    config = {
        "kind": KIND, "version": FORMAT_VERSION, "arch": arch.name, "arch_file": arch.source.filename,
        "arch_sha256": _fingerprint(arch.source.text), "variant": arch.variant, "policy": arch.policy.name,
        "params": dict(arch.params), "n": int(n), "range": list(_parse_pair(value_range, "the sampling range")),
        "budget": list(_parse_pair(band, "the budget band")), "seed": int(seed), "data": data,
        "root": root_text, "recipe": dataclasses.asdict(recipe),
        "base": {"macs": base.macs, "params": base.params, "resolution": arch.resolution},
    }
    if options:  # only when given, so runs started before the option existed still resume
        config["data_options"] = options
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise RunError(f"{folder} exists and is not a folder")
    if folder.is_dir() and not folder_is_empty(folder) and load_config(folder, CONFIG_FILE) is None:
        raise RunError(f"{folder} is not empty and holds no tiny sampling run; choose another folder")
    # The data may move between runs (another mount point), and --n may grow or shrink: the plan for n
    # models is a prefix of the plan for more. Everything else must match to resume.
    check_config(folder, config, CONFIG_FILE, ignore=("root", "n"))
    atomic_write_text(folder / "arch.arch", arch.source.text)  # what was sampled, for reproducibility

    cells, draws = plan_cells(arch, n, value_range, band, seed)
    atomic_write_json(folder / CELLS_FILE, {"draws": draws, "cells": [c.to_dict() for c in cells]})
    results = {c.index: r for c in cells if (r := read_cell_result(cell_dir(folder, c), c)) is not None}
    pending = [c for c in cells if c.index not in results]
    log(f"tiny sample: {len(cells)} models in the band ({draws:,} draws); {len(results)} already trained, "
        f"{len(pending)} to train ({executor})")

    job = SampleJob(run_dir=str(folder), arch_text=arch.source.text, arch_filename=arch.source.filename,
                    variant=arch.variant, policy=arch.policy.name, params=dict(arch.params), data=data,
                    root=root_text, recipe=dataclasses.asdict(recipe), device=device,
                    data_options=tuple(sorted(options.items())))

    def report(result: CellResult) -> None:
        results[result.cell.index] = result
        cell = result.cell
        log(f"[{len(results)}/{len(cells)}] cell {cell.name}: r={cell.r:.3f} d={cell.d:.3f} w={cell.w:.3f} "
            f"res {cell.resolution} MACs {cell.macs:,} (c={cell.c:.3f}) -> "
            f"test acc {100 * result.final_test_acc:.2f}% "
            f"(best {100 * result.best_test_acc:.2f}%) in {result.seconds:.1f}s")

    if pending:
        if executor == "ray":
            if gpus_per_cell is None:
                import torch  # local: defers torch; this module is torch-free
                gpus_per_cell = 1.0 if torch.cuda.is_available() else 0.0
            _run_ray(job, pending, report, ray_address, gpus_per_cell)
        else:
            _run_local(job, pending, report, log)
    return [results[c.index] for c in cells if c.index in results]
