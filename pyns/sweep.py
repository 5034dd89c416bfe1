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
        checkpoint.pt, metrics.jsonl, ...   pyns.train's run files (an interrupted cell resumes from them)
    table.md, table.csv        Table 1: per method and budget, params, MACs, latency and accuracy
                               (best over epochs, as the paper reports, and final) as mean ± std over seeds
    fig4_accuracy_vs_params.png, fig5_accuracy_vs_latency.png

Cells run one after another in this process by default; `executor="ray"` submits them as Ray tasks
(`ray.init(address=...)` when an address is given, else a local instance). The sweep folder and the data
must then be on a file system every Ray node sees.

This module also holds `run_training`, the one training run behind both `pyns train` and a sweep cell:
train with pyns.train, then count the built module, measure latency the paper's way and write result.json.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pyns.errors import BudgetError, DataError, PynsError, RunError
from pyns.runfiles import atomic_write_bytes, atomic_write_json, atomic_write_text, compare_configs, load_config

__all__ = [
    "METHODS",
    "DataSpec",
    "ArchSpec",
    "SweepConfig",
    "Cell",
    "run_training",
    "parse_ratios",
    "sweep_budgets",
    "plan_cells",
    "run_cell",
    "run_sweep",
    "aggregate",
    "write_table",
    "write_figures",
    "read_table_csv",
    "RESULT_FILE",
    "CELL_FILE",
    "SWEEP_FILE",
    "TABLE_MD",
    "TABLE_CSV",
    "FIGURE_PARAMS",
    "FIGURE_LATENCY",
]

METHODS = ("uniform", "morphnet", "neuralscale", "li")
FULL = "full"  # the trained default network that the li cells prune (not a method of its own)
RESULT_FILE = "result.json"
CELL_FILE = "cell.json"
SWEEP_FILE = "sweep.json"
TABLE_MD = "table.md"
TABLE_CSV = "table.csv"
FIGURE_PARAMS = "fig4_accuracy_vs_params.png"
FIGURE_LATENCY = "fig5_accuracy_vs_latency.png"
_SWEEP_KIND = "pyns-sweep"
# A sweep may grow (more ratios, methods, seeds) or move (data root, device, executor) between runs
# without changing what its finished cells mean.
# The profile and trajectory are named by path, which may move; what they gave is checked per cell
# (its planned widths) instead.
_EXTENDABLE = ("ratios", "methods", "seeds", "data.root", "device", "profile", "trajectory")
LATENCY_METHOD = "paper: batch 100, 20 warm-up batches, mean of the next 80"
BEST_NOTE = "maximum test accuracy over epochs, as the paper reports"


# ----------------------------------------------------------------------------------------------------
# What to train on
# ----------------------------------------------------------------------------------------------------


@dataclass
class DataSpec:
    """A data set by name, where it lives and its reader options (see pyns.data.load_dataset)."""

    name: str
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def load(self, split: str, arch) -> Any:
        """One split, converted to the arch's input size and channel count."""
        from pyns.data import load_dataset

        return load_dataset(self.name, self.root, split, resolution=arch.resolution,
                            channels=arch.network.in_channels, **self.options)


@dataclass
class ArchSpec:
    """An architecture by name or path with its overrides (what `pyns.arch.load` takes)."""

    name: str
    params: dict[str, float] = field(default_factory=dict)
    variant: str | None = None
    policy: str | None = None

    def load(self, classes: int | None = None):
        """The arch; its `classes` parameter follows `classes` (the data set's) unless set explicitly."""
        from pyns.arch import load

        arch = load(self.name, variant=self.variant, policy=self.policy, **self.params)
        if classes is not None and "classes" not in self.params and "classes" in arch.source.params:
            if arch.network.params.get("classes") != classes:
                arch = load(self.name, variant=self.variant, policy=self.policy, **self.params, classes=classes)
        return arch

    def load_for(self, data: DataSpec):
        """(arch, train set, test set), the arch's outputs matched to the data set's classes."""
        from pyns.dsl.expr import evaluate

        probe = self.load()
        train_set = data.load("train", probe)
        arch = self.load(train_set.num_classes)
        outputs = int(evaluate(arch.network.out_features, arch.defaults))
        if outputs != train_set.num_classes:
            raise DataError(f"{arch.name} has {outputs} outputs but the data set has {train_set.num_classes} "
                            f"classes; pass --set classes={train_set.num_classes}")
        test_set = data.load("test", arch)
        return arch, train_set, test_set


# ----------------------------------------------------------------------------------------------------
# One training run: train, count, time, record
# ----------------------------------------------------------------------------------------------------


def _params_of(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def run_training(arch, model: torch.nn.Module, train_set, test_set, recipe, out_dir: str | Path, *,
                 resume: bool = False, overwrite: bool = False, device: str | torch.device | None = None,
                 augment: bool = True, info: Mapping[str, Any] | None = None, latency: bool = True,
                 progress: bool = False) -> dict[str, Any] | None:
    """Train `model` (built from `arch`) with `recipe` and write `out_dir/result.json`; returns its content.

    result.json holds pyns.train's summary (final and best test accuracy, labelled) plus: `params` (the
    trainable parameters of the trained module, which must equal the cost engine's count), `macs`,
    `latency` (pyns.latency, the paper's way) and `train_images_per_s`, the widths, and everything in
    `info`; `complete: true` marks it finished. Under torchrun only rank 0 measures and writes; the
    other ranks return None. `device=None` picks the GPU of this process where there is one.
    """
    from pyns.augment import default_augment
    from pyns.latency import measure_latency
    from pyns.train import distributed_context, make_loaders, train

    widths = dict(getattr(model, "widths", arch.defaults))
    counted = arch.count(widths)
    params = _params_of(model)
    if params != counted.params:
        raise RunError(f"the built {arch.name} has {params:,} parameters but the cost engine counts "
                       f"{counted.params:,}; this is a pyns bug, please report it")
    train_loader, test_loader = make_loaders(train_set, test_set, recipe, device=device,
                                             augment=default_augment(train_set.name) if augment else None)
    result = train(model, train_loader, test_loader, recipe, out_dir=out_dir, resume=resume, overwrite=overwrite,
                   progress=progress)
    if not distributed_context().is_main:
        return None
    record: dict[str, Any] = {
        "arch": arch.name,
        "widths": {s: int(widths[s]) for s in arch.searchable},
        "params": params,
        "params_note": "trainable parameters of the built module (BN weights and biases included)",
        "macs": counted.macs,
        "macs_note": "multiply-accumulates of conv and linear layers for one image (FLOPs = 2 x MACs)",
        **dict(info or {}),
        **result.to_dict(),
    }
    seconds = sum(r.time for r in result.history)
    # Wall time per epoch covers training and the test pass, so this is an end-to-end rate.
    record["train_images_per_s"] = len(train_set) * len(result.history) / seconds if seconds > 0 else None
    if latency:
        shape = (arch.network.in_channels, arch.resolution, arch.resolution)
        channels_last = bool(recipe.channels_last) and next(model.parameters()).device.type == "cuda"
        timing = measure_latency(model, shape, next(model.parameters()).device, channels_last=channels_last)
        record["latency"] = {**dataclasses.asdict(timing), "method": LATENCY_METHOD}
        record["latency_ms"] = timing.ms_per_batch
        record["images_per_s"] = timing.images_per_s
    record["recipe"] = dataclasses.asdict(recipe)
    record["complete"] = True
    atomic_write_json(Path(out_dir) / RESULT_FILE, record)
    return record


def read_result(folder: str | Path) -> dict[str, Any] | None:
    """The complete result.json of a run folder, or None (absent, or only pyns.train's partial one)."""
    record = load_config(folder, RESULT_FILE)
    return record if isinstance(record, dict) and record.get("complete") is True else None


# ----------------------------------------------------------------------------------------------------
# Sweep settings and cells
# ----------------------------------------------------------------------------------------------------


def parse_ratios(text: str) -> list[float]:
    """`0.25:2:0.25` (start:stop:step, stop included) or a comma list `0.25,0.75,2`."""
    text = text.strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if step <= 0 or start <= 0 or stop < start:
                raise PynsError(f"--width-ratios {text}: need 0 < start <= stop and step > 0")
            count = int(math.floor((stop - start) / step + 1e-9)) + 1  # 1e-9: 0.25:2:0.25 includes 2
            ratios = [round(start + i * step, 10) for i in range(count)]  # round: 0.1*3 = 0.30000000000000004
        else:
            ratios = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise PynsError(f"--width-ratios: `{text}` is neither start:stop:step nor a comma list of numbers") from None
    if not ratios or any(not (r > 0 and math.isfinite(r)) for r in ratios):
        raise PynsError(f"--width-ratios: every ratio must be a positive number, got `{text}`")
    if len(set(ratios)) != len(ratios):
        raise PynsError(f"--width-ratios: `{text}` lists a ratio twice")
    return ratios


def sweep_budgets(arch, ratios: Sequence[float], metric: str = "params") -> dict[float, int]:
    """Budget per ratio: the cost of the default network scaled uniformly by the ratio (the paper's)."""
    if metric not in ("params", "macs"):
        raise PynsError(f"the budget metric must be params or macs, got {metric!r}")
    return {r: int(getattr(arch.count(arch.uniform_widths(r)), metric)) for r in ratios}


@dataclass
class SweepConfig:
    """Everything a sweep trains. `recipe` is a pyns.train.TrainRecipe (its seed is replaced per cell)."""

    arch: ArchSpec
    data: DataSpec
    recipe: Any
    ratios: list[float]
    methods: list[str]
    seeds: list[int]
    metric: str = "params"
    profile: str | None = None  # neuralscale: a profile.json (a descent run's final profile)
    trajectory: str | None = None  # morphnet: a trajectory.jsonl or a prune / descent run folder
    morphnet_fraction: float = 0.5
    li_epochs: int | None = None  # None: 40 (20 on TinyImageNet)
    li_lr: float = 0.001
    augment: bool = True
    device: str | None = None  # None: the GPU where there is one

    def validate(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise PynsError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
        if not self.methods:
            raise PynsError("give at least one method (--methods uniform,neuralscale)")
        if len(set(self.methods)) != len(self.methods):
            raise PynsError(f"--methods lists a method twice: {','.join(self.methods)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise PynsError(f"seeds must be distinct and at least one, got {self.seeds}")
        if "neuralscale" in self.methods and not self.profile:
            raise PynsError("the neuralscale method needs a profile: pass --descent RUN_DIR or --profile FILE")
        if "morphnet" in self.methods and not self.trajectory:
            raise PynsError("the morphnet method needs a pruning trajectory: pass --descent RUN_DIR (its "
                            "iter-00) or --trajectory PATH")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["recipe"] = dataclasses.asdict(self.recipe)
        return {"kind": _SWEEP_KIND, **out}


@dataclass
class Cell:
    """One training of a sweep. For li, `widths` are the pruned widths; `source` is the full cell."""

    method: str
    ratio: float
    seed: int
    metric: str
    budget: int
    widths: dict[str, int]
    cost: dict[str, int]  # params and MACs the cost engine gives for the widths
    how: dict[str, Any] = field(default_factory=dict)  # how the widths were found (solver result, ...)
    source: str | None = None  # li: the folder name of the full network it prunes

    @property
    def name(self) -> str:
        return f"{self.method}_r{self.ratio:g}_seed{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _solve(arch, config: SweepConfig, method: str, budget: int, cache: dict[str, Any]) -> tuple[dict, dict]:
    """(widths, how) of a method at a budget."""
    from pyns.baselines import morphnet_baseline, uniform_baseline
    from pyns.scaling.profile import Profile
    from pyns.scaling.solve import solve_budget

    kwargs = {config.metric: budget}
    if method == "uniform":
        result = uniform_baseline(arch, **kwargs)
        return result.widths, {"solve": result.to_dict()}
    if method == "neuralscale":
        if "profile" not in cache:
            cache["profile"] = Profile.load(config.profile)
        result = solve_budget(arch, **kwargs, method="profile", profile=cache["profile"])
        return result.widths, {"solve": result.to_dict(), "profile": str(config.profile)}
    if method == "morphnet":
        result, point = morphnet_baseline(arch, config.trajectory, **kwargs, fraction=config.morphnet_fraction)
        return result.widths, {"solve": result.to_dict(), "morphnet_point": point.to_dict(),
                               "trajectory": str(config.trajectory)}
    if method == "li":
        trained = {s: arch.defaults[s] for s in arch.searchable}
        result = solve_budget(arch, **kwargs, method="from-config", config=trained)
        return result.widths, {"solve": result.to_dict(), "pruned_from": trained}
    raise PynsError(f"unknown method {method!r}")


def plan_cells(arch, config: SweepConfig) -> tuple[list[Cell], list[str]]:
    """Every cell of the sweep (full-network cells first when li is asked for) and notes on cells left out.

    Widths are solved here, before any training, so a profile or budget that cannot work stops the sweep
    at once. li cells exist only for budgets below the full network (pruning cannot grow a network).
    """
    import warnings

    from pyns.scaling.profile import ScalingWarning

    config.validate()
    budgets = sweep_budgets(arch, config.ratios, config.metric)
    full_cost = arch.count()
    cells: list[Cell] = []
    notes: list[str] = []
    cache: dict[str, Any] = {}
    solved: dict[tuple[str, float], tuple[dict, dict]] = {}
    for method in config.methods:
        for ratio in config.ratios:
            if method == "li" and budgets[ratio] >= getattr(full_cost, config.metric):
                notes.append(f"li at ratio {ratio:g}: the budget is not below the full network, nothing to prune")
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ScalingWarning)
                widths, how = _solve(arch, config, method, budgets[ratio], cache)
            how["warnings"] = sorted({str(w.message) for w in caught})
            solved[(method, ratio)] = (widths, how)
    if "li" in config.methods and any(m == "li" for m, _ in solved):
        for seed in config.seeds:
            cells.append(Cell(FULL, 1.0, seed, config.metric, int(getattr(full_cost, config.metric)),
                              {s: arch.defaults[s] for s in arch.searchable},
                              {"params": full_cost.params, "macs": full_cost.macs},
                              {"note": "the trained default network that the li cells prune"}))
    for seed in config.seeds:
        for ratio in config.ratios:
            for method in config.methods:
                if (method, ratio) not in solved:
                    continue
                widths, how = solved[(method, ratio)]
                cost = arch.count(widths)
                source = f"{FULL}_r1_seed{seed}" if method == "li" else None
                cells.append(Cell(method, ratio, seed, config.metric, budgets[ratio],
                                  {s: int(widths[s]) for s in arch.searchable},
                                  {"params": cost.params, "macs": cost.macs}, how, source))
    return cells, notes


# ----------------------------------------------------------------------------------------------------
# Running one cell (also what a Ray task runs)
# ----------------------------------------------------------------------------------------------------


def _cell_spec(config: SweepConfig, cell: Cell, out: Path) -> dict[str, Any]:
    """A plain dict with everything a cell needs, so it can travel to a Ray worker."""
    return {"cell": cell.to_dict(), "folder": str(out / "cells" / cell.name),
            "source_folder": str(out / "cells" / cell.source) if cell.source else None,
            "arch": dataclasses.asdict(config.arch), "data": dataclasses.asdict(config.data),
            "recipe": dataclasses.asdict(config.recipe), "li_epochs": config.li_epochs, "li_lr": config.li_lr,
            "augment": config.augment, "device": config.device}


_DATA_CACHE: dict[str, Any] = {}  # serial sweeps load the data set once, not once per cell


def _load_for(arch_spec: ArchSpec, data_spec: DataSpec) -> tuple[Any, Any, Any]:
    import json

    key = json.dumps([dataclasses.asdict(arch_spec), dataclasses.asdict(data_spec)], sort_keys=True, default=str)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()  # one sweep at a time: keep at most one data set in memory
        _DATA_CACHE[key] = arch_spec.load_for(data_spec)
    return _DATA_CACHE[key]


def run_cell(spec: Mapping[str, Any], progress: bool = False) -> dict[str, Any]:
    """Train one cell (or return its complete result); returns the result record plus `skipped`."""
    from pyns.baselines import li_finetune_recipe, li_prune
    from pyns.data import derive_seed
    from pyns.train import CHECKPOINT_FILE, TrainRecipe, load_checkpoint

    folder = Path(spec["folder"])
    done = read_result(folder)
    if done is not None:
        return {**done, "skipped": True}
    cell = Cell(**spec["cell"])
    arch_spec, data_spec = ArchSpec(**spec["arch"]), DataSpec(**spec["data"])
    arch, train_set, test_set = _load_for(arch_spec, data_spec)
    recipe = TrainRecipe(**spec["recipe"]).replace(seed=cell.seed)
    if arch.count(cell.widths).params != cell.cost["params"]:
        raise RunError(f"cell {cell.name}: its widths no longer cost what was planned; the architecture "
                       "changed since the sweep started")
    folder.mkdir(parents=True, exist_ok=True)
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
                          device=spec["device"], augment=spec["augment"], info=info, progress=progress)
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

    @property
    def files(self) -> dict[str, Path]:
        return {"table_md": self.out / TABLE_MD, "table_csv": self.out / TABLE_CSV,
                "fig_params": self.out / FIGURE_PARAMS, "fig_latency": self.out / FIGURE_LATENCY}


def _check_sweep_folder(out: Path, config: SweepConfig) -> None:
    saved = load_config(out, SWEEP_FILE)
    current = config.to_dict()
    if saved is not None:
        if saved.get("kind") != _SWEEP_KIND:
            raise RunError(f"{out} holds something other than a pyns sweep ({out / SWEEP_FILE})")
        differences = compare_configs(saved, current, ignore=_EXTENDABLE)
        if differences:
            raise RunError(f"the sweep in {out} was started with different settings: " + "; ".join(differences),
                           hint="rerun with the original settings (ratios, methods and seeds may grow), or "
                                "use another --out")
    out.mkdir(parents=True, exist_ok=True)
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


def _run_serial(specs: Sequence[dict[str, Any]], say: Callable[[str], None], progress: bool,
                counter: list[int]) -> list[dict]:
    out = []
    for spec in specs:
        name = Path(spec["folder"]).name
        started = time.perf_counter()
        record = run_cell(spec, progress=progress)
        counter[0] += 1
        state = "done before, skipped" if record["skipped"] else f"{time.perf_counter() - started:.1f}s"
        say(f"[{counter[0]}/{counter[1]}] {name}: {_describe(record)} ({state})")
        out.append(record)
    return out


def _import_ray():
    try:
        import ray
    except ImportError:
        raise PynsError("the ray executor needs Ray, which is not installed: pip install ray") from None
    return ray


def _run_ray(specs: Sequence[dict[str, Any]], say: Callable[[str], None], address: str | None,
             cpus: float, gpus: float, counter: list[int]) -> list[dict]:
    ray = _import_ray()
    if not ray.is_initialized():
        ray.init(address=address) if address else ray.init()
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(run_cell)
    pending = {task.remote(dict(spec)): spec for spec in specs}
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
            results[spec["folder"]] = record
            counter[0] += 1
            say(f"[{counter[0]}/{counter[1]}] {name}: {_describe(record)}"
                + (" (done before, skipped)" if record["skipped"] else ""))
    return [results[spec["folder"]] for spec in specs]


def run_sweep(config: SweepConfig, out_dir: str | Path, *, executor: str = "serial", ray_address: str | None = None,
              ray_cpus_per_cell: float = 1, ray_gpus_per_cell: float = 0, say: Callable[[str], None] | None = None,
              progress: bool = False) -> SweepResult:
    """Plan, train every cell not yet complete, then write the table and the figures. See the module doc."""
    if executor not in ("serial", "ray"):
        raise PynsError(f"the executor must be serial or ray, got {executor!r}")
    if executor == "ray":
        _import_ray()  # before any planning or training: a missing Ray is a set-up problem
    say = say or (lambda line: print(line, file=sys.stderr))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a folder; choose another --out")
    arch, _, _ = _load_for(config.arch, config.data)  # fails fast on a missing data set or a class mismatch
    cells, notes = plan_cells(arch, config)
    _check_sweep_folder(out, config)
    _check_planned(out, cells)
    for note in notes:
        say(f"note: {note}")
    specs = [_cell_spec(config, cell, out) for cell in cells]
    # li cells need their full network trained: they form a second wave.
    waves = [[s for s in specs if s["cell"]["method"] != "li"], [s for s in specs if s["cell"]["method"] == "li"]]
    by_folder: dict[str, dict] = {}
    counter = [0, len(specs)]  # cells finished, cells in all
    for wave in waves:
        if not wave:
            continue
        if executor == "ray":
            records = _run_ray(wave, say, ray_address, ray_cpus_per_cell, ray_gpus_per_cell, counter)
        else:
            records = _run_serial(wave, say, progress, counter)
        by_folder.update({spec["folder"]: record for spec, record in zip(wave, records)})
    records = [by_folder[spec["folder"]] for spec in specs]
    rows = aggregate(records, config.methods, config.ratios)
    write_table(rows, out)
    write_figures(rows, out)
    ran = sum(1 for r in records if not r["skipped"])
    return SweepResult(out, records, rows, notes, ran, len(records) - ran)


# ----------------------------------------------------------------------------------------------------
# Table 1 and Figures 4/5
# ----------------------------------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); no std from a single seed."""
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


def aggregate(records: Sequence[Mapping[str, Any]], methods: Sequence[str] | None = None,
              ratios: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """One row per (ratio, method) over seeds: costs, latency and accuracies as mean and sample std.

    Rows are ordered by ratio, then by `methods` (the full network of li, if any, first at its ratio).
    """
    groups: dict[tuple[float, str], list[Mapping[str, Any]]] = {}
    for record in records:
        groups.setdefault((float(record["ratio"]), record["method"]), []).append(record)
    order = [FULL, *(methods or METHODS)]
    rows = []
    for (ratio, method), group in sorted(groups.items(), key=lambda kv: (kv[0][0], order.index(kv[0][1])
                                                                          if kv[0][1] in order else len(order))):
        params = sorted({int(r["params"]) for r in group})
        macs = sorted({int(r["macs"]) for r in group})
        row: dict[str, Any] = {
            "ratio": ratio, "method": method, "budget_metric": group[0]["budget"]["metric"],
            "budget": int(group[0]["budget"]["value"]), "params": params[0] if len(params) == 1 else None,
            "macs": macs[0] if len(macs) == 1 else None, "seeds": len(group),
        }
        for key, values in (("best_acc", [r["best_test_acc"] for r in group]),
                            ("final_acc", [r["final_test_acc"] for r in group]),
                            ("latency_ms", [r["latency_ms"] for r in group if r.get("latency_ms") is not None])):
            mean, std = _mean_std(values) if values else (None, None)
            row[f"{key}_mean"], row[f"{key}_std"] = mean, std
        rows.append(row)
    return rows


CSV_COLUMNS = ("ratio", "method", "budget_metric", "budget", "params", "macs", "latency_ms_mean", "latency_ms_std",
               "best_acc_mean", "best_acc_std", "final_acc_mean", "final_acc_std", "seeds")


def _pm(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 2) -> str:
    if mean is None:
        return "n/a"
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if std is not None else "")


def write_table(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """table.md (readable, the paper's Table 1 quantities) and table.csv (every number, for tools)."""
    from pyns.cli.common import human

    out = Path(out_dir)
    lines = [
        "| ratio | method | params | MACs | latency (ms / batch of 100) | best acc. (%) | final acc. (%) | seeds |",
        "|---:|:---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        params = f"{r['params']:,} ({human(r['params'])})" if r["params"] is not None else "varies"
        macs = f"{r['macs']:,} ({human(r['macs'])})" if r["macs"] is not None else "varies"
        latency = _pm(r["latency_ms_mean"], r["latency_ms_std"])
        best = _pm(r["best_acc_mean"], r["best_acc_std"], 100)
        final = _pm(r["final_acc_mean"], r["final_acc_std"], 100)
        lines.append(f"| {r['ratio']:g} | {r['method']} | {params} | {macs} | {latency} | {best} | {final} "
                     f"| {r['seeds']} |")
    metric = rows[0]["budget_metric"] if rows else "params"
    notes = [
        "",
        f"Budgets: the {metric} of the default network scaled uniformly by each ratio; every network meets its budget.",
        f"best acc.: {BEST_NOTE}; final acc.: after the last epoch. Both as mean ± sample standard deviation "
        "(n - 1) over seeds.",
        f"latency: {LATENCY_METHOD}, mean ± std over seeds. params: trainable parameters of the built module; "
        "MACs: conv and linear multiply-accumulates per image.",
        "full: the trained default network that the li (L1-norm pruning) cells start from.",
    ]
    md = out / TABLE_MD
    atomic_write_text(md, "\n".join(lines + notes) + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    path = out / TABLE_CSV
    atomic_write_text(path, buffer.getvalue())
    return md, path


def read_table_csv(path: str | Path) -> list[dict[str, Any]]:
    """table.csv back as rows with numbers (empty cells become None)."""
    ints, texts = {"budget", "params", "macs", "seeds"}, {"method", "budget_metric"}
    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if key in texts:
                    row[key] = value
                elif value == "":
                    row[key] = None
                else:
                    row[key] = int(value) if key in ints else float(value)
            rows.append(row)
    return rows


def write_figures(rows: Sequence[Mapping[str, Any]], out_dir: str | Path) -> tuple[Path, Path]:
    """Figure 4 (accuracy vs params) and Figure 5 (accuracy vs latency): best accuracy, mean ± std."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = Path(out_dir)
    paths = []
    for x_key, x_label, name, title in (
        ("params", "parameters", FIGURE_PARAMS, "Figure 4: accuracy vs parameters"),
        ("latency_ms_mean", "latency (ms per batch of 100)", FIGURE_LATENCY, "Figure 5: accuracy vs latency"),
    ):
        # The Figure object alone (no pyplot): no global backend switch, safe inside other programs.
        figure = Figure(figsize=(6.4, 4.8), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot(1, 1, 1)
        methods = list(dict.fromkeys(r["method"] for r in rows))
        for method in methods:
            points = sorted((r[x_key], r) for r in rows if r["method"] == method and r[x_key] is not None
                            and r["best_acc_mean"] is not None)
            if not points:
                continue
            xs = [x for x, _ in points]
            ys = [100 * r["best_acc_mean"] for _, r in points]
            errors = [100 * (r["best_acc_std"] or 0.0) for _, r in points]
            axes.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=method)
        if x_key == "params":
            axes.set_xscale("log")
        axes.set_xlabel(x_label)
        axes.set_ylabel("test accuracy (%), best over epochs")
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
        if methods:
            axes.legend()
        path = out / name
        with io.BytesIO() as buffer:
            figure.savefig(buffer, format="png")
            atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths[0], paths[1]
