"""The tiny formula fitted on a `pyns tiny sample` run (pyns.tinynet.sample): read back, select, fit.

`load_sample_dir` reads a run folder back, `select_front` picks the top fraction of its trained models by
non-dominated sorting on (accuracy up, MACs down), and `fit_sample_dir` reports the Spearman correlations
on them, fits the GPs c -> r and c -> d and writes formula.json (what `pyns tiny --formula` reads) and
fit.json (the selection).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pyns.arch import loads
from pyns.errors import ProfileError, PynsError, RunError
from pyns.tinynet.pareto import non_dominated_sort, pareto_top
from pyns.runfiles import atomic_write_json, atomic_write_text, load_config
from pyns.tinynet.options import ACCURACIES, DEFAULT_FRACTION, MIN_FIT_MODELS
from pyns.tinynet.formula import TinyFormula, fit_formula, spearman_with_macs
from pyns.tinynet.sample import CELLS_FILE, CONFIG_FILE, KIND, Cell, CellResult, cell_dir, read_cell_result

__all__ = [
    "SampleRun", "FitReport", "ACCURACIES", "DEFAULT_FRACTION", "FIT_FILE", "FORMULA_FILE", "load_sample_dir",
    "is_sample_dir", "select_front", "fit_sample_dir",
]

FIT_FILE = "fit.json"
FORMULA_FILE = "formula.json"


# ---- reading a run back ------------------------------------------------------------------------------


@dataclass
class SampleRun:
    """A sampling run folder as read back: its settings, its plan and the finished cells."""

    folder: Path
    config: dict[str, Any]
    cells: list[Cell]
    results: list[CellResult]

    @property
    def base_macs(self) -> int:
        return int(self.config["base"]["macs"])

    def arrays(self, accuracy: str = "final") -> dict[str, np.ndarray]:
        """Columns over the finished cells: r, d, w, macs, c, acc ([n] each)."""
        cols = {k: np.array([getattr(res.cell, k) for res in self.results], dtype=np.float64)
                for k in ("r", "d", "w", "macs", "c")}
        cols["acc"] = np.array([res.accuracy(accuracy) for res in self.results], dtype=np.float64)
        return cols


def is_sample_dir(path: str | Path) -> bool:
    """Does `path` hold a `pyns tiny sample` run (its config.json says kind "tiny-sample")?"""
    try:
        config = load_config(path, CONFIG_FILE)
    except RunError:
        return False
    return isinstance(config, dict) and config.get("kind") == KIND


def load_sample_dir(path: str | Path) -> SampleRun:
    folder = Path(path)
    if not folder.is_dir():
        raise RunError(f"{folder} is not a folder; pass the --out folder of `pyns tiny sample`")
    config = load_config(folder, CONFIG_FILE)
    if not isinstance(config, dict) or config.get("kind") != KIND:
        raise RunError(f"{folder} holds no tiny sampling run (no {CONFIG_FILE} of kind {KIND!r}); "
                       "create one with `pyns tiny sample`")
    try:
        plan = json.loads((folder / CELLS_FILE).read_text(encoding="utf-8"))
        cells = [Cell.from_dict(c) for c in plan["cells"]]
    except FileNotFoundError:
        raise RunError(f"{folder} has no {CELLS_FILE}; the sampling run never got past its start") from None
    except (ValueError, KeyError, TypeError):
        raise RunError(f"{folder / CELLS_FILE} is damaged; rerun `pyns tiny sample` with the same settings "
                       "to rewrite it") from None
    results = [r for c in cells if (r := read_cell_result(cell_dir(folder, c), c)) is not None]
    return SampleRun(folder, config, cells, results)


# ---- fitting -----------------------------------------------------------------------------------------


def select_front(acc: np.ndarray, macs: np.ndarray, fraction: float = DEFAULT_FRACTION
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(selected, first front): indices of the top `fraction` by non-dominated sorting on (acc up, MACs
    down), and of the models nobody dominates."""
    return pareto_top(acc, macs, fraction), non_dominated_sort(acc, macs)[0]


@dataclass
class FitReport:
    run_dir: Path
    models: int                      # finished models considered
    selected: list[str]              # cell names of the top fraction
    front: list[str]                 # cell names of the first non-dominated front
    spearman: dict[str, dict[str, float]]
    formula: TinyFormula
    formula_path: Path | None
    accuracy: str
    fraction: float
    figures: list[Path] = field(default_factory=list)

    @property
    def loo(self) -> dict[str, dict[str, Any]]:
        """Leave-one-out error of the c -> r and c -> d GPs on the selected models."""
        return self.formula.loo_errors()

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": str(self.run_dir), "models": self.models, "fraction": self.fraction,
                "accuracy": self.accuracy, "selected": self.selected, "front": self.front,
                "spearman_with_macs": self.spearman, "formula": self.formula.to_dict(),
                "formula_path": None if self.formula_path is None else str(self.formula_path),
                "leave_one_out": self.loo, "min_models": MIN_FIT_MODELS,
                "figures": [str(p) for p in self.figures]}


def _classes(run: SampleRun) -> int | None:
    """The sampled network's number of outputs (the data set's classes), from the folder's arch copy."""
    try:
        arch = loads((run.folder / "arch.arch").read_text(encoding="utf-8"), variant=run.config.get("variant"),
                     **run.config.get("params", {}))
        return int(arch.network.params["classes"])
    except (OSError, KeyError, TypeError, ValueError, PynsError):
        return None  # no chance level known: only the equal-accuracy check applies


def _refuse_uninformative(run: SampleRun, acc: np.ndarray) -> None:
    """Models that all score the same (typically all at chance) rank by MACs alone: no front to fit."""
    classes = _classes(run)
    chance = 1.0 / classes if isinstance(classes, (int, float)) and classes > 1 else None
    # 1.5x chance: a model that learned nothing scatters around 1/classes by a few test images.
    at_chance = chance is not None and bool(np.all(acc <= 1.5 * chance))
    if np.ptp(acc) == 0 or at_chance:
        what = (f"at chance (every accuracy <= 1.5 / {classes} classes)" if at_chance
                else f"equally accurate ({100 * acc[0]:.2f}%)")
        raise RunError(f"the selected models of {run.folder} are all {what}: their ranking reflects MACs "
                       "alone, so a formula fitted on them says nothing about r and d; train longer "
                       "(--epochs) or check the data")


def fit_sample_dir(path: str | Path, out: str | Path | None = None, *, fraction: float = DEFAULT_FRACTION,
                   accuracy: str = "final") -> FitReport:
    """Select the top `fraction` of the finished models, fit the tiny formula on them and write it to `out`
    (default: RUN_DIR/formula.json), with the selection and Spearman correlations in RUN_DIR/fit.json."""
    if accuracy not in ACCURACIES:
        raise PynsError(f"accuracy must be one of {', '.join(ACCURACIES)}, got {accuracy!r}")
    run = load_sample_dir(path)
    if not run.results:
        raise RunError(f"{run.folder} has no trained models yet; run `pyns tiny sample` first")
    cols = run.arrays(accuracy)
    selected, front = select_front(cols["acc"], cols["macs"], fraction)
    if len(selected) < MIN_FIT_MODELS:
        raise RunError(f"the top {fraction:g} of the {len(run.results)} trained models in {run.folder} is "
                       f"{len(selected)} model(s); a tiny formula needs at least {MIN_FIT_MODELS} (a GP's three "
                       "hyperparameters are not determined by fewer); sample more models (--n) or select a "
                       "larger --fraction")
    _refuse_uninformative(run, cols["acc"][selected])
    names = [res.cell.name for res in run.results]
    spearman = spearman_with_macs(cols["r"][selected], cols["d"][selected], cols["w"][selected],
                                  cols["macs"][selected])
    config = run.config
    source = (f"fitted by `pyns tiny fit` on the top {len(selected)} of {len(run.results)} models "
              f"(non-dominated sorting on {accuracy} test accuracy vs MACs) of {config['arch']} "
              f"(policy {config['policy']}) sampled in {run.folder.name}/ on {config['data']}, "
              f"{config['recipe']['epochs']} epochs each; c = MACs / {run.base_macs:,} (its default network)")
    try:
        formula = fit_formula(cols["c"][selected], cols["r"][selected], cols["d"][selected], source=source,
                              labels=[names[i] for i in selected])
    except ProfileError as err:
        raise ProfileError(f"cannot fit a formula on the {len(selected)} selected models: {err}; sample "
                           "more models (--n) or select a larger fraction") from None
    target = Path(out) if out is not None else run.folder / FORMULA_FILE
    atomic_write_text(target, formula.to_json())
    report = FitReport(run.folder, len(run.results), [names[i] for i in selected], [names[i] for i in front],
                       spearman, formula, target, accuracy, fraction)
    atomic_write_json(run.folder / FIT_FILE, report.to_dict())
    return report
