"""The paper's Figure 2 for a pruning run (filters per layer against τ, log-log, fitted power laws dashed)
and Figure 3 for a descent run (every searchable width across descent iterations).

`figure2` / `descent_figure` build the Figure (tests inspect its layout); `plot_figure2` / `plot_descent`
write it. Drawing goes through pyns.figures (constrained layout, plain-number log axes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pyns.errors import RunError
from pyns.figures import legend_outside, new_figure, plain_log_axis, save_png
from pyns.scaling.profile import Profile

FIGURE_FILE = "descent_widths.png"
FIGURE2_FILE = "figure2.png"
PROFILE_FILE = "profile.json"
_MAX_LEGEND_ITERATIONS = 8  # beyond this many lines a legend is a wall of text: a colour bar instead


def _least_squares_laws(rows: list[dict], symbols: list[str]) -> dict[str, tuple[float, float]]:
    """OLS of ln φ on (1, ln τ) per symbol: used only when the run has no readable profile.json."""
    tau = np.log([row["params"] for row in rows])
    laws = {}
    for symbol in symbols:
        phi = np.log([row["widths"][symbol] for row in rows])
        beta, intercept = np.polyfit(tau, phi, 1)
        laws[symbol] = (float(np.exp(intercept)), float(beta))
    return laws


def figure2(folder: str | Path):
    """Figure 2 of a pruning run folder as a matplotlib Figure."""
    # local: the pruning package imports torch; deferred so the plots import without it
    from pyns.neuralscale.prune.runfolder import load_run_config, read_trajectory

    folder = Path(folder)
    config = load_run_config(folder)
    rows = read_trajectory(folder)
    if not rows:
        raise RunError(f"{folder} has no trajectory rows yet; nothing to plot")
    symbols: list[str] = list(config["searchable"])
    recorded = [row for row in rows if row.get("recording")]
    laws: dict[str, tuple[float, float]] = {}
    source = ""
    if (folder / PROFILE_FILE).exists():
        profile = Profile.load(folder / PROFILE_FILE)
        laws = {name: (fit.alpha, fit.beta) for name, fit in profile.fits.items()}
        source = "profile.json"
        if profile.fallback:
            source = f"the profile fell back to {profile.fallback} scaling: no curves"
    elif len(recorded) >= 2:
        laws, source = _least_squares_laws(recorded, symbols), "least squares on the recorded rows; no profile.json"

    fig = new_figure((8.0, 5.5))
    ax = fig.add_subplot(1, 1, 1)
    many = len(symbols) > 10
    import matplotlib  # local: defers matplotlib for the CLI's quick commands

    colors = matplotlib.colormaps["viridis" if many else "tab10"]
    tau_all = np.array([row["params"] for row in rows], dtype=float)
    for index, symbol in enumerate(symbols):
        color = colors(index / max(1, len(symbols) - 1)) if many else colors(index % 10)
        phi_all = np.array([row["widths"][symbol] for row in rows], dtype=float)
        ax.plot(tau_all, phi_all, color=color, alpha=0.25, linewidth=1)  # before recording: faint
        if recorded:
            tau = np.array([row["params"] for row in recorded], dtype=float)
            phi = np.array([row["widths"][symbol] for row in recorded], dtype=float)
            ax.plot(tau, phi, color=color, marker=".", markersize=3, linewidth=1.2, label=symbol)
        else:
            ax.plot([], [], color=color, label=symbol)
        if symbol in laws:
            alpha, beta = laws[symbol]
            grid = np.geomspace(tau_all.min(), tau_all.max(), 100)
            ax.plot(grid, alpha * grid ** beta, color=color, linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_axis(ax.xaxis)
    plain_log_axis(ax.yaxis)
    ax.set_xlabel("parameters τ")
    ax.set_ylabel("filters per layer φ")
    title = (f"{config.get('arch', '?')} on {config.get('data', {}).get('name', '?')}: filters vs τ "
             "(faint: before recording)")
    if laws:
        title += f"\n(dashed: fitted power laws, {source})"
    elif source:
        title += f"\n({source})"
    fig.suptitle(title, fontsize=10)  # above the legend column too: constrained layout keeps them apart
    ax.grid(True, which="both", alpha=0.3)
    legend_outside(fig, ax, fontsize=7, ncol=min(len(symbols), 10), title="width")
    return fig


def plot_figure2(folder: str | Path, out: str | Path | None = None) -> Path:
    return save_png(figure2(folder), Path(out) if out is not None else Path(folder) / FIGURE2_FILE)


def descent_figure(run_dir: str | Path):
    """Figure 3 of a descent run folder (its summary.jsonl) as a matplotlib Figure."""
    from pyns.neuralscale.descent import read_summary  # local: descent imports torch (via the pruner)

    rows = read_summary(run_dir)
    symbols = list(rows[0]["start_widths"])
    fig = new_figure((max(6.4, 0.45 * len(symbols) + 2.0), 4.4))
    ax = fig.add_subplot(1, 1, 1)
    import matplotlib  # local: defers matplotlib for the CLI's quick commands

    cmap = matplotlib.colormaps["viridis"]
    labelled = len(rows) <= _MAX_LEGEND_ITERATIONS
    for i, row in enumerate(rows):
        shade = cmap(i / max(1, len(rows) - 1))
        ax.plot(range(len(symbols)), [row["start_widths"][s] for s in symbols], marker="o", ms=3,
                color=shade, label=f"iteration {row['iteration']}" if labelled else None)
    ax.set_xticks(range(len(symbols)))
    ax.set_xticklabels(symbols, rotation=60 if len(symbols) > 8 else 0, fontsize=8)
    ax.set_xlabel("searchable width (in network order)")
    ax.set_ylabel("filters at the start of the iteration")
    fig.suptitle(f"width per layer across {len(rows)} descent iterations (NeuralScale Figure 3)")
    ax.grid(True, alpha=0.3)
    if labelled:
        legend_outside(fig, ax, fontsize=8)
    else:
        # local: defers matplotlib for the CLI's quick commands
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        mappable = ScalarMappable(norm=Normalize(rows[0]["iteration"], rows[-1]["iteration"]), cmap=cmap)
        fig.colorbar(mappable, ax=ax, label="iteration")
    return fig


def plot_descent(run_dir: str | Path, out: str | Path | None = None) -> Path:
    return save_png(descent_figure(run_dir), Path(out) if out is not None else Path(run_dir) / FIGURE_FILE)
