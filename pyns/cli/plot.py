"""`pyns plot RUN_DIR`: draw the figures a run folder supports, as PNG.

The command dispatches on what the folder contains: each entry of `PLOTTERS` says whether it recognises a
folder and draws its figures. A pruning run (config.json of kind "prune") gets the paper's Figure 2:
filters per layer against the parameter count τ, log-log, with the fitted power laws dashed. Later run
kinds (architecture descent, TinyNet sampling) register their own entries with `register_plotter`.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pyns.errors import RunError


@dataclass(frozen=True)
class Plotter:
    name: str
    recognises: Callable[[Path], bool]  # does this folder hold this kind of run?
    draw: Callable[[Path, Path | None], list[Path]]  # (run folder, --out or None) -> files written


PLOTTERS: list[Plotter] = []


def register_plotter(plotter: Plotter) -> None:
    """Add a figure kind; the first plotter that recognises a folder draws it."""
    PLOTTERS.append(plotter)


def register(sub) -> None:
    p = sub.add_parser("plot", help="draw a run folder's figures (PNG)",
                       description="Draw the figures of a run folder as PNG: for a pruning run, the paper's "
                                   "Figure 2 (filters per layer vs parameters tau, log-log, fitted curves dashed).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by a pyns command (e.g. `pyns prune`)")
    p.add_argument("--out", metavar="FILE", help="PNG file to write (default: inside RUN_DIR)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pyns.cli.common import check_out_file, check_out_folder

    if args.out is not None and os.path.isdir(args.out):
        check_out_folder(args.out)  # a tiny sample's figures may go into a folder
    else:
        check_out_file(args.out)
    for path in plot_run(args.run_dir, args.out):
        print(f"figure: {path}")
    return 0


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> list[Path]:
    folder = Path(run_dir)
    if not folder.is_dir():
        raise RunError(f"{folder} is not a folder; pass a run folder written by a pyns command")
    for plotter in PLOTTERS:
        if plotter.recognises(folder):
            return plotter.draw(folder, None if out is None else Path(out))
    kinds = ", ".join(p.name for p in PLOTTERS)
    raise RunError(f"{folder} holds no run pyns can plot (known kinds: {kinds})")


# ----------------------------------------------------------------------------------------------------
# Figure 2 of NeuralScale: filters per layer vs τ
# ----------------------------------------------------------------------------------------------------

FIGURE2_FILE = "figure2.png"


def _is_prune_run(folder: Path) -> bool:
    from pyns.neuralscale.prune.runfolder import CONFIG_FILE, RUN_KIND, TRAJECTORY_FILE
    from pyns.runfiles import load_config

    try:
        config = load_config(folder, CONFIG_FILE)
    except RunError:
        return False
    return bool(config) and config.get("kind") == RUN_KIND and (folder / TRAJECTORY_FILE).exists()


def _least_squares_laws(rows: list[dict], symbols: list[str]) -> dict[str, tuple[float, float]]:
    """OLS of ln φ on (1, ln τ) per symbol: used only when the run has no readable profile.json."""
    import numpy as np

    tau = np.log([row["params"] for row in rows])
    laws = {}
    for symbol in symbols:
        phi = np.log([row["widths"][symbol] for row in rows])
        beta, intercept = np.polyfit(tau, phi, 1)
        laws[symbol] = (float(np.exp(intercept)), float(beta))
    return laws


def draw_figure2(folder: Path, out: Path | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    import numpy as np

    from pyns.cli.fit import PROFILE_FILE
    from pyns.neuralscale.prune.runfolder import load_run_config, read_trajectory
    from pyns.runfiles import atomic_writer
    from pyns.scaling.profile import Profile

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

    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    colors = plt.get_cmap("viridis" if len(symbols) > 10 else "tab10")
    tau_all = np.array([row["params"] for row in rows], dtype=float)
    for index, symbol in enumerate(symbols):
        color = colors(index / max(1, len(symbols) - 1)) if len(symbols) > 10 else colors(index % 10)
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
    ax.set_xlabel("parameters τ")
    ax.set_ylabel("filters per layer φ")
    title = (f"{config.get('arch', '?')} on {config.get('data', {}).get('name', '?')}: filters vs τ "
             "(faint: before recording)")
    if laws:
        title += f"\n(dashed: fitted power laws, {source})"
    elif source:
        title += f"\n({source})"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(symbols) > 8 else 1, loc="best")
    fig.tight_layout()
    path = out or folder / FIGURE2_FILE
    with atomic_writer(path, "wb") as handle:  # a half-written PNG is never left behind
        fig.savefig(handle, format="png", dpi=150)
    plt.close(fig)
    return [path]


register_plotter(Plotter("prune (NeuralScale Figure 2)", _is_prune_run, draw_figure2))


def _is_descent_run(folder: Path) -> bool:
    from pyns.neuralscale.descent import is_descent_run

    return is_descent_run(folder)


def _draw_descent(folder: Path, out: Path | None) -> list[Path]:
    from pyns.neuralscale.plots import plot_descent

    return [plot_descent(folder, out)]


def _is_tiny_sample(folder: Path) -> bool:
    from pyns.tinynet.plots import is_tiny_sample_dir

    return is_tiny_sample_dir(folder)


def _draw_tiny(folder: Path, out: Path | None) -> list[Path]:
    from pyns.tinynet.plots import plot_tiny_dir

    return plot_tiny_dir(folder, out)


register_plotter(Plotter("descent (NeuralScale Figure 3)", _is_descent_run, _draw_descent))
register_plotter(Plotter("tiny sample (TinyNet Figures 1 and 3)", _is_tiny_sample, _draw_tiny))
