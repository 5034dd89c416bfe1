"""The paper's Figure 3 for a descent run: every searchable width across descent iterations."""
from __future__ import annotations

from pathlib import Path

from pyns.neuralscale.descent import read_summary
from pyns.safewrite import atomic_writer

FIGURE_FILE = "descent_widths.png"


def plot_descent(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    rows = read_summary(run_dir)
    symbols = list(rows[0]["start_widths"])
    iterations = [row["iteration"] for row in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(symbols)), 4.0))
    cmap = plt.get_cmap("viridis")
    for i, row in enumerate(rows):
        shade = cmap(i / max(1, len(rows) - 1))
        ax.plot(range(len(symbols)), [row["start_widths"][s] for s in symbols], marker="o", ms=3,
                color=shade, label=f"iteration {row['iteration']}" if i in (0, len(rows) - 1) else None)
    ax.set_xticks(range(len(symbols)))
    ax.set_xticklabels(symbols, rotation=60, fontsize=8)
    ax.set_ylabel("filters")
    ax.set_title(f"width per layer across {len(iterations)} descent iterations (Figure 3)")
    ax.legend()
    fig.tight_layout()
    target = Path(out) if out is not None else Path(run_dir) / FIGURE_FILE
    try:
        with atomic_writer(target, "wb") as handle:  # a reader never sees half a PNG
            fig.savefig(handle, format="png", dpi=120)
    finally:
        plt.close(fig)
    return target
