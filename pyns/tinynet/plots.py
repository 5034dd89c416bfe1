"""Figures 1 and 3 of the TinyNet paper for a `pyns tiny sample` run folder, as PNG.

- Figure 1: test accuracy against MACs of every trained model; the selected top fraction (non-dominated
  sorting) highlighted and the first Pareto front drawn as a staircase.
- Figure 3: r, d and w against MACs for the selected models, with their Spearman correlation; where the
  folder holds a fitted formula (`pyns tiny fit`), the GP means ± 2 standard deviations of r and d.

matplotlib is driven through its object API with the Agg canvas: no global backend switch, no window, safe
in threads and on headless machines.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pyns.errors import ProfileError
from pyns.tinynet.fit import DEFAULT_FRACTION, FORMULA_FILE, is_sample_dir, load_sample_dir, select_front
from pyns.tinynet.formula import TinyFormula, spearman_with_macs

__all__ = ["FIGURE1", "FIGURE3", "plot_tiny_dir", "is_tiny_sample_dir"]

FIGURE1 = "tiny_fig1_accuracy_vs_macs.png"
FIGURE3 = "tiny_fig3_rdw_vs_macs.png"
_DPI = 120  # a 6.4 x 4.8 inch figure at 120 dpi: ~770 x 580 pixels, readable in a browser or a paper draft


def is_tiny_sample_dir(path: str | Path) -> bool:
    """True when `path` is a `pyns tiny sample` run folder (config.json with kind "tiny-sample")."""
    return Path(path).is_dir() and is_sample_dir(path)


def _figure(size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _targets(folder: Path, out: str | Path | None) -> tuple[Path, Path]:
    """Where the two figures go: the run folder by default; `out` may be a folder or a `NAME.png` whose stem
    prefixes both files (NAME_fig1.png, NAME_fig3.png)."""
    if out is None:
        return folder / FIGURE1, folder / FIGURE3
    out = Path(out)
    if out.suffix.lower() == ".png":
        return out.with_name(f"{out.stem}_fig1.png"), out.with_name(f"{out.stem}_fig3.png")
    return out / FIGURE1, out / FIGURE3


def _save(fig, path: Path) -> Path:
    from pyns.runfiles import atomic_writer

    with atomic_writer(path, "wb") as handle:
        fig.savefig(handle, format="png")
    return path


def plot_tiny_dir(run_dir: str | Path, out: str | Path | None = None, *, fraction: float = DEFAULT_FRACTION,
                  accuracy: str = "final") -> list[Path]:
    """Draw Figures 1 and 3 for a sampling run; returns the PNG paths (see `_targets` for `out`)."""
    run = load_sample_dir(run_dir)
    if not run.results:
        raise ProfileError(f"{run.folder} has no trained models to plot yet; run `pyns tiny sample` first")
    cols = run.arrays(accuracy)
    selected, front = select_front(cols["acc"], cols["macs"], fraction)
    fig1_path, fig3_path = _targets(run.folder, out)
    mmacs = cols["macs"] / 1e6  # axis in millions of MACs
    acc = 100 * cols["acc"]

    fig = _figure((6.4, 4.8))
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(mmacs, acc, s=18, color="0.6", label=f"sampled models ({len(acc)})")
    ax.scatter(mmacs[selected], acc[selected], s=30, color="tab:red",
               label=f"top {100 * fraction:g}% by non-dominated sorting ({len(selected)})")
    order = front[np.argsort(mmacs[front], kind="stable")]
    ax.step(mmacs[order], acc[order], where="post", color="tab:red", linewidth=1, label="Pareto front")
    ax.set_xlabel("MACs (millions; FLOPs = 2 x MACs)")
    ax.set_ylabel(f"{accuracy} test accuracy (%)")
    ax.set_title(f"{run.config['arch']} on {run.config['data']}: accuracy vs MACs")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    written = [_save(fig, fig1_path)]

    formula = None
    formula_file = run.folder / FORMULA_FILE
    if formula_file.exists():
        formula = TinyFormula.load(formula_file)
    rho = spearman_with_macs(cols["r"][selected], cols["d"][selected], cols["w"][selected], cols["macs"][selected])
    fig = _figure((12.0, 3.8))
    grid = np.linspace(mmacs[selected].min(), mmacs[selected].max(), 200)
    for k, name in enumerate(("r", "d", "w")):
        ax = fig.add_subplot(1, 3, k + 1)
        ax.scatter(mmacs[selected], cols[name][selected], s=24, color=("tab:blue", "tab:green", "tab:orange")[k])
        if formula is not None and name in ("r", "d") and grid[-1] > grid[0]:
            pred = formula.predict(grid * 1e6 / run.base_macs)
            mean, std = (pred.r, pred.r_std) if name == "r" else (pred.d, pred.d_std)
            ax.plot(grid, mean, color="black", linewidth=1, label="GP mean")
            ax.fill_between(grid, mean - 2 * std, mean + 2 * std, color="black", alpha=0.12, label="± 2 std")
            ax.legend(loc="best", fontsize="small")
        value = rho[name]["rho"]
        ax.set_title(f"{name} of the selected models (Spearman ρ = {value:.2f})" if np.isfinite(value)
                     else f"{name} of the selected models")
        ax.set_xlabel("MACs (millions)")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, fig3_path))
    return written
