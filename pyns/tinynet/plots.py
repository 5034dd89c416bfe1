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
from pyns.figures import legend_outside, new_figure, save_png
from pyns.tinynet.fit import DEFAULT_FRACTION, FORMULA_FILE, is_sample_dir, load_sample_dir, select_front
from pyns.tinynet.formula import TinyFormula, spearman_with_macs

__all__ = ["FIGURE1", "FIGURE3", "plot_tiny_dir", "tiny_figures", "is_tiny_sample_dir"]

FIGURE1 = "tiny_fig1_accuracy_vs_macs.png"
FIGURE3 = "tiny_fig3_rdw_vs_macs.png"


def is_tiny_sample_dir(path: str | Path) -> bool:
    """True when `path` is a `pyns tiny sample` run folder (config.json with kind "tiny-sample")."""
    return Path(path).is_dir() and is_sample_dir(path)


def _targets(folder: Path, out: str | Path | None) -> tuple[Path, Path]:
    """Where the two figures go: the run folder by default; `out` may be a folder or a `NAME.png` whose stem
    prefixes both files (NAME_fig1.png, NAME_fig3.png)."""
    if out is None:
        return folder / FIGURE1, folder / FIGURE3
    out = Path(out)
    if out.suffix.lower() == ".png":
        return out.with_name(f"{out.stem}_fig1.png"), out.with_name(f"{out.stem}_fig3.png")
    return out / FIGURE1, out / FIGURE3


def tiny_figures(run_dir: str | Path, *, fraction: float = DEFAULT_FRACTION, accuracy: str = "final"):
    """(Figure 1, Figure 3) of a sampling run as matplotlib Figures."""
    run = load_sample_dir(run_dir)
    if not run.results:
        raise ProfileError(f"{run.folder} has no trained models to plot yet; run `pyns tiny sample` first")
    cols = run.arrays(accuracy)
    selected, front = select_front(cols["acc"], cols["macs"], fraction)
    mmacs = cols["macs"] / 1e6  # axis in millions of MACs
    acc = 100 * cols["acc"]

    fig1 = new_figure((7.6, 4.8))
    ax = fig1.add_subplot(1, 1, 1)
    ax.scatter(mmacs, acc, s=18, color="0.6", label=f"sampled models ({len(acc)})", zorder=2)
    ax.scatter(mmacs[selected], acc[selected], s=30, color="tab:red", zorder=3,
               label=f"top {100 * fraction:g}% by\nnon-dominated sorting ({len(selected)})")
    order = front[np.argsort(mmacs[front], kind="stable")]
    ax.step(mmacs[order], acc[order], where="post", color="tab:red", linewidth=1, label="Pareto front")
    ax.set_xlabel("MACs (millions; FLOPs = 2 x MACs)")
    ax.set_ylabel(f"{accuracy} test accuracy (%)")
    fig1.suptitle(f"{run.config['arch']} on {run.config['data']}: accuracy vs MACs (TinyNet Figure 1)")
    ax.grid(True, alpha=0.3)
    legend_outside(fig1, ax, fontsize="small")  # beside the axes: it can never cover a model

    formula = None
    formula_file = run.folder / FORMULA_FILE
    if formula_file.exists():
        formula = TinyFormula.load(formula_file)
    rho = spearman_with_macs(cols["r"][selected], cols["d"][selected], cols["w"][selected], cols["macs"][selected])
    fig3 = new_figure((12.0, 4.2))
    fig3.suptitle(f"resolution r, depth d and width w of the {len(selected)} selected models against MACs "
                  "(TinyNet Figure 3)")
    grid = np.linspace(mmacs[selected].min(), mmacs[selected].max(), 200)
    for k, name in enumerate(("r", "d", "w")):
        ax = fig3.add_subplot(1, 3, k + 1)
        ax.scatter(mmacs[selected], cols[name][selected], s=24, color=("tab:blue", "tab:green", "tab:orange")[k],
                   zorder=3)
        if formula is not None and name in ("r", "d") and grid[-1] > grid[0]:
            pred = formula.predict(grid * 1e6 / run.base_macs)
            mean, std = (pred.r, pred.r_std) if name == "r" else (pred.d, pred.d_std)
            ax.plot(grid, mean, color="black", linewidth=1, label="GP mean")
            ax.fill_between(grid, mean - 2 * std, mean + 2 * std, color="black", alpha=0.12, label="± 2 std")
        value = rho[name]["rho"]
        # Short titles: three side by side must fit their own axes (the long wording is the suptitle).
        ax.set_title(f"{name}  (Spearman ρ = {value:.2f})" if np.isfinite(value) else f"{name}  (ρ undefined)")
        ax.set_xlabel("MACs (millions)")
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    if formula is not None:
        legend_outside(fig3, fig3.axes[0], fontsize="small")
    return fig1, fig3


def plot_tiny_dir(run_dir: str | Path, out: str | Path | None = None, *, fraction: float = DEFAULT_FRACTION,
                  accuracy: str = "final") -> list[Path]:
    """Draw Figures 1 and 3 for a sampling run; returns the PNG paths (see `_targets` for `out`)."""
    fig1, fig3 = tiny_figures(run_dir, fraction=fraction, accuracy=accuracy)
    fig1_path, fig3_path = _targets(Path(run_dir), out)
    return [save_png(fig1, fig1_path), save_png(fig3, fig3_path)]
