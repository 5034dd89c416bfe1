"""The one way pyns draws a figure: matplotlib's object API on an Agg canvas (no pyplot state, no window,
safe in threads and on headless machines), constrained layout (titles, labels and legends never clipped or
overlapping), log axes labelled in plain numbers, and atomic PNG writes.

matplotlib is imported inside the functions: importing this module costs nothing, so the quick commands
stay quick.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

from pyns.runfiles import atomic_write_bytes

__all__ = ["new_figure", "save_png", "plain_log_axis", "legend_outside"]

DPI = 120  # a 6.4 x 4.8 inch figure at 120 dpi: ~770 x 580 pixels, readable in a browser or a paper draft


def new_figure(size: tuple[float, float] = (6.4, 4.8)):
    """A Figure with constrained layout, attached to an Agg canvas."""
    # local: defers matplotlib for the CLI's quick commands
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure, path: str | Path) -> Path:
    """Write `figure` as PNG atomically (a reader never sees half a file); returns the path."""
    with io.BytesIO() as buffer:
        figure.savefig(buffer, format="png")
        atomic_write_bytes(path, buffer.getvalue())
    return Path(path)


def _plain(value: float) -> str:
    """40 -> '40', 20000 -> '20k', 1.5e6 -> '1.5M': what a reader says aloud (not 4×10^1)."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}"


# Which minor ticks get a label, by how many decades the axis spans: on a narrow axis (a sweep over a few
# width ratios) the decade ticks may not even be in view, on a wide one the decades alone are enough.
# Neighbouring labels stay at least ~0.3 inch apart on a 6-inch axis at 8-10 pt (checked by the tests).
_MINOR_DIGITS = ((1.2, (2, 3, 4, 5, 6, 8)), (2.5, (2, 3, 5)), (4.0, (3,)))


def plain_log_axis(axis) -> None:
    """Label a log-scaled axis in plain numbers (20k, 40, 1.5M: never 4×10^1): every decade, plus as many
    minor ticks as the axis has room for (see `_MINOR_DIGITS`)."""
    from matplotlib.ticker import FuncFormatter, LogLocator  # local: defers matplotlib

    def minor(value: float, _position) -> str:
        if value <= 0:
            return ""
        lo, hi = sorted(axis.get_view_interval())
        span = math.log10(hi / lo) if lo > 0 else math.inf
        digits = next((d for limit, d in _MINOR_DIGITS if span <= limit), ())
        leading = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        return _plain(value) if leading in digits else ""

    axis.set_major_locator(LogLocator(base=10))
    axis.set_major_formatter(FuncFormatter(lambda value, _position: _plain(value)))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10))))
    axis.set_minor_formatter(FuncFormatter(minor))


def legend_outside(figure, axes, *, ncol: int | None = None, **kwargs) -> None:
    """The legend of `axes` below the plot, where it can cover neither a data point nor the title
    (constrained layout makes room for it); `ncol` defaults to one row of up to 4 entries per row."""
    handles, labels = axes.get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncol=ncol or min(len(handles), 4), **kwargs)
